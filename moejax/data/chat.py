"""Data stage 1, documents: a chat -> its text and the byte spans of its assistant turns.

A chat is a list of messages `{"role": ..., "content": ...}` (`data.messages_field`). It is
rendered with the tokenizer's Jinja chat template as Hugging Face transformers renders it
(`apply_chat_template`): an `ImmutableSandboxedEnvironment` with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, transformers' `tojson` filter and
`raise_exception` global, a `{% generation %}` block that renders its body, and the variables
`messages`, `add_generation_prompt` and the tokenizer's special tokens (`bos_token`,
`eos_token`, ... as strings). No `strftime_now`: a template that asks for today's date gets its
fixed fallback, so a corpus renders the same every day.

The template is the tokenizer directory's `chat_template.jinja`, else the "chat_template" of
its `tokenizer_config.json` (a string, or a list of {"name", "template"}: the "default" one).

The trained spans (`render_chat`): for each assistant message i, the bytes between rendering
`messages[:i]` with `add_generation_prompt=True` and `messages[:i + 1]` without it (the
assistant's reply and the template's end-of-turn text). Both renders must be prefixes of the
whole chat's render (an incremental template), else the chat is an error.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from moejax.data.tokenizer import load_tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                  "mask_token")
NO_SPAN = ((0, 0),)  # the trained spans of a chat without an assistant turn: nothing


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with.

    Attributes:
      source: where the template was read (a file, for errors).
      text: the Jinja source.
      special_tokens: {"bos_token": "<s>", ...}: the tokenizer's special tokens as strings.
    """

    source: str
    text: str
    special_tokens: Mapping[str, str]
    _compiled: jinja2.Template = dataclasses.field(compare=False, repr=False, default=None)

    def render(self, messages: Sequence[Mapping], *, add_generation_prompt: bool = False) -> str:
        """The template applied to `messages`.

        Raises:
          ValueError: the template raised (`raise_exception`, an undefined value, a type error).
        """
        try:
            return self._compiled.render(messages=list(messages),
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except (jinja2.TemplateError, TypeError, ValueError) as err:
            raise ValueError(f"the chat template ({self.source}) raised: "
                             f"{type(err).__name__}: {err}") from err


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): the body."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' `tojson` filter: JSON with non-ASCII kept and no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def compile_chat_template(text: str, special_tokens: Mapping[str, str] | None = None,
                          source: str = "<string>") -> ChatTemplate:
    """A `ChatTemplate` of Jinja source `text` (see the module docstring for the environment).

    Raises:
      ValueError: naming `source`: `text` is not valid Jinja.
    """
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    try:
        compiled = environment.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"the chat template {source} is not valid Jinja: {err.message} "
                         f"(template line {err.lineno})") from err
    return ChatTemplate(source, text, dict(special_tokens or {}), compiled)


def load_chat_template(tokenizer: str | pathlib.Path) -> ChatTemplate:
    """The chat template of `data.tokenizer` (a tokenizer.json or its directory).

    Raises:
      ValueError: naming `data.tokenizer` and `data.messages_field`: the tokenizer has no chat
        template ("bytes", or a directory with neither file), or it is not valid Jinja.
    """
    directory = load_tokenizer(tokenizer).directory
    where = f"data.tokenizer={str(tokenizer)!r}"
    if directory is None:
        raise ValueError(f"{where} has no chat template; data.messages_field needs a tokenizer "
                         f"directory with a {CHAT_TEMPLATE_FILE} or a tokenizer_config.json "
                         "holding a chat_template")
    configs = [_read_json(directory / name, where)
               for name in ("tokenizer_config.json", "special_tokens_map.json")]
    text, source = _template_text(directory, configs[0], where)
    special = {}
    for config in configs:
        for key in SPECIAL_TOKENS:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str):
                special.setdefault(key, token)
    try:
        return compile_chat_template(text, special, source)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _read_json(path: pathlib.Path, where: str) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read {path}: {err}") from err
    return config if isinstance(config, dict) else {}


def _template_text(directory: pathlib.Path, config: dict, where: str) -> tuple[str, str]:
    """(Jinja source, where it was read) of the tokenizer directory's chat template."""
    file = directory / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8"), str(file)
    template = config.get("chat_template")
    source = f"{directory / 'tokenizer_config.json'} chat_template"
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template, source = named.get("default"), f"{source} 'default'"
    if not isinstance(template, str):
        raise ValueError(f"{where} has no chat template (no {CHAT_TEMPLATE_FILE}, no "
                         "chat_template string in its tokenizer_config.json); "
                         "data.messages_field needs one")
    return template, source


def render_chat(template: ChatTemplate, messages: Sequence[Mapping], *,
                where: str = "a chat") -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """A chat's text (UTF-8) and its trained spans: the assistant turns' bytes.

    Args:
      template: the tokenizer's chat template.
      messages: the chat, a sequence of {"role": str, "content": ...}.
      where: names the record in errors ("/data/chats.jsonl line 3").

    Returns:
      (text, spans): the whole chat rendered without a generation prompt, and one `(start,
      end)` byte span per assistant message, or `NO_SPAN` (nothing trained) when it has none.

    Raises:
      ValueError: naming `where`: the template raised, a render is not a prefix of the next
        (not incremental), or the text is not encodable as UTF-8.
    """
    try:
        whole = template.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = template.render(messages[:i], add_generation_prompt=True)
            after = template.render(messages[:i + 1])
            if not (after.startswith(before) and whole.startswith(after)):
                raise ValueError(
                    f"the chat template ({template.source}) is not incremental: the render of "
                    f"messages[:{i}] with add_generation_prompt=True is not a prefix of that of "
                    f"messages[:{i + 1}], or that is not a prefix of the whole chat's")
            spans.append((len(before.encode("utf-8")), len(after.encode("utf-8"))))
        return whole.encode("utf-8"), tuple(spans) or NO_SPAN
    except (ValueError, UnicodeError) as err:
        raise ValueError(f"data.messages_field: {where}: {err}") from err

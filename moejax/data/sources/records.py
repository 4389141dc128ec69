"""Data stage 1, sources: one record (a JSON object, a parquet row, a dataset row) -> Document.

Shared by the record sources ("jsonl", "parquet", "hf_dataset"). Which fields make the text:

- `data.messages_field` set: a chat (a list of {"role", "content"}) rendered with the
  tokenizer's chat template (`moejax.data.chat.render_chat`); trained: the assistant turns.
- `data.prompt_field` and `data.completion_field` set: the text is the prompt's UTF-8 bytes
  followed by the completion's (nothing inserted); trained: `((len(prompt), len(text)),)`.
- otherwise `data.text_field`; trained: all of it (`()`).

The domain is the record's `data.domain_field` when set, else the source's default (a file's
parent directory name). A missing, null or non-string field, invalid UTF-8 (a binary column)
or a lone surrogate is a one-line ValueError naming the option and the record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from moejax.data.chat import ChatTemplate, load_chat_template, render_chat
from moejax.data.sources.document import Document


@dataclasses.dataclass(frozen=True)
class RecordReader:
    """Turns records into documents for one `DataSpec` (build it once per pass: `for_spec`).

    Attributes:
      text_fields: (option, key) pairs of the fields that make the text, in order.
      domain_field: the key of the domain, or None (the source's default domain).
      template: the chat template when the text is a chat, else None.
    """

    text_fields: tuple[tuple[str, str], ...]
    domain_field: str | None = None
    template: ChatTemplate | None = None

    @classmethod
    def for_spec(cls, spec) -> RecordReader:
        """The reader of `spec`'s fields (loads the chat template when `messages_field` is set).

        Raises:
          ValueError: both `messages_field` and `prompt_field` are set, or the tokenizer has
            no chat template for `messages_field`.
        """
        messages = getattr(spec, "messages_field", None)
        prompt = getattr(spec, "prompt_field", None)
        if messages is not None and prompt is not None:
            raise ValueError(f"data.messages_field={messages!r} and data.prompt_field="
                             f"{prompt!r}: a record is a chat or a prompt/completion; set one")
        if messages is not None:
            return cls((("data.messages_field", messages),), spec.domain_field,
                       load_chat_template(spec.tokenizer))
        if prompt is not None:
            return cls((("data.prompt_field", prompt),
                        ("data.completion_field", spec.completion_field)), spec.domain_field)
        return cls((("data.text_field", spec.text_field),), spec.domain_field)

    @property
    def columns(self) -> tuple[str, ...]:
        """The record keys read (the text's, then the domain's)."""
        keys = [key for _, key in self.text_fields]
        if self.domain_field is not None and self.domain_field not in keys:
            keys.append(self.domain_field)
        return tuple(keys)

    def document(self, record, name: str, where: str, default_domain: str) -> Document:
        """The document of `record` (a mapping), named `name`.

        Args:
          record: one record (a JSON object, a row as a dict).
          name: the document's name ("<file>:<line>").
          where: the record for errors ("/data/a.jsonl line 3").
          default_domain: the domain when `domain_field` is None.
        """
        if not isinstance(record, Mapping):
            option, key = self.text_fields[0]
            raise ValueError(f"{option}={key!r}: {where} is a {type(record).__name__}, not an "
                             "object with named fields")
        domain = default_domain
        if self.domain_field is not None:
            domain = _string(record, "data.domain_field", self.domain_field, where)
        if self.template is not None:
            option, key = self.text_fields[0]
            text, trained = render_chat(self.template, _messages(record, option, key, where),
                                        where=where)
            return Document(name, text, domain, trained)
        parts = [_utf8(_string(record, option, key, where), option, key, where)
                 for option, key in self.text_fields]
        text = b"".join(parts)
        trained = ((len(parts[0]), len(text)),) if len(parts) == 2 else ()
        return Document(name, text, domain, trained)


def _string(record: Mapping, option: str, key: str, where: str) -> str:
    """record[key] as a str (bytes are decoded as strict UTF-8)."""
    if key not in record:
        raise ValueError(f"{option}={key!r}: {where} has no field {key!r} "
                         f"(found: {sorted(map(str, record))})")
    value = record[key]
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{option}={key!r}: {where}: field {key!r} is not valid UTF-8: "
                             f"{err}") from err
    if not isinstance(value, str):
        raise ValueError(f"{option}={key!r}: {where}: field {key!r} is "
                         f"{'null' if value is None else type(value).__name__}, not a string")
    return value


def _utf8(value: str, option: str, key: str, where: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800" in JSON)
        raise ValueError(f"{option}={key!r}: {where}: field {key!r} is not valid Unicode: "
                         f"{err}") from err


def _messages(record: Mapping, option: str, key: str, where: str) -> list[Mapping]:
    """record[key] as a list of messages, each a mapping with a string "role"."""
    messages = record.get(key)
    if key not in record or not isinstance(messages, list | tuple):
        found = "missing" if key not in record else type(messages).__name__
        raise ValueError(f"{option}={key!r}: {where}: field {key!r} must be a list of "
                         f"{{'role', 'content'}} objects (found: {found})")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"{option}={key!r}: {where}: message {i} is not an object with a "
                             f"string 'role' (found: {type(message).__name__})")
    return list(messages)

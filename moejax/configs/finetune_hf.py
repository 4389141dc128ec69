"""Fine-tune a pretrained MoE (a Hugging Face Mixtral directory or a moejax export) with the
specialization losses (paper A's fine-tuning setting).

Launch:
  moejax-train --config configs/finetune_hf.py:/path/to/model --workdir /tmp/ft
The model options come from the source's config.json, `train.init_from` is the source, and
the losses are the default config's (lb 1e-2, sp 2e-3, cp 1e-3). The data is the default
byte-level corpus: point `config.data` at text tokenized for the model for real use.
"""

import pathlib

from moejax.models.decoder import decoder_spec_from_config
from moejax.models.hf_config import spec_from_hf_config
from moejax.models.hf_dir import read_config
from moejax.train.config_files import default_config_for


def get_config(arg=None):
    if not arg:
        raise ValueError("configs/finetune_hf.py needs the model directory: "
                         "--config configs/finetune_hf.py:/path/to/model")
    source = pathlib.Path(arg).expanduser().resolve()
    saved = read_config(source)  # a JSON object, or a one-line error naming the file
    if "model_type" not in saved and "model" not in saved:
        raise ValueError(f"{source / 'config.json'} is neither a Hugging Face config "
                         "(model_type) nor a moejax export's (model)")
    spec = (spec_from_hf_config(saved) if "model_type" in saved
            else decoder_spec_from_config(saved["model"]))
    config = default_config_for(spec)
    config.train.init_from = str(source)
    config.train.update(learning_rate=1e-4, warmup_steps=10, steps=100)
    return config

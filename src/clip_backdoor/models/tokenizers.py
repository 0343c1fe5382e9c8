"""Each family's own tokenizer, found offline when it can be, and built here for tiny models.

Why: SigLIP's and SigLIP2's tokenizers (and every transformers checkpoint's) are Hugging Face
tokenizers that open_clip fetches from the hub by name. Offline that retries for a minute and
fails, so a name is looked up in this order, and a miss is one line that says how to give a local
copy: an explicit ``tokenizer`` (a folder written by ``save_pretrained``, or a hub name); the
model's own folder (open_clip's ``local-dir:`` convention: the tokenizer lives beside the
weights); a local folder of that name; the Hugging Face cache; the hub, only if it answers.

Tiny models (tests, the compatibility table) need real tokenizers of each kind without a
download: ``build_sentencepiece`` trains a small SentencePiece model (SigLIP's kind) on a fixed
built-in corpus, and ``build_clip_bpe`` writes CLIP's own BPE (open_clip ships its merges) as a
transformers ``CLIPTokenizer``.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch

from clip_backdoor.core.errors import ModelLoadError, first_line

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
BUILT, BUILT_KINDS = "built:", ("sentencepiece", "clip-bpe")  # tokenizers made here (tiny models)
HOW_TO_GIVE = (
    "give a local copy: `tokenizer: PATH` under `model:` in a recipe or `--tokenizer PATH` "
    "(a folder written by the tokenizer's save_pretrained), or set HF_HOME to a Hugging Face "
    "cache that holds it"
)


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (a quick socket probe; no minute of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def built_source(source: str | Path) -> str:
    """``built:KIND`` (a tokenizer made here, for untrained models offline) as its folder."""
    source = str(source)
    if not source.startswith(BUILT):
        return source
    from clip_backdoor.models.families import built_tokenizer

    kind = source[len(BUILT) :]
    if kind not in BUILT_KINDS:
        raise ModelLoadError(f"unknown built tokenizer '{kind}' ({', '.join(BUILT_KINDS)})")
    return str(built_tokenizer(kind))


def auto_tokenizer(source: str | Path, what: str):
    """transformers' ``AutoTokenizer`` of a folder or hub name, offline first (see module doc)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = built_source(source)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        if Path(source).expanduser().exists():
            raise ModelLoadError(f"{source} is not a tokenizer folder ({first_line(e)})") from None
    if not hub_reachable():
        raise ModelLoadError(
            f"the tokenizer '{source}' of {what} is not in the Hugging Face cache and the hub "
            f"cannot be reached (it needs the network once); {HOW_TO_GIVE}"
        )
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not fetch the tokenizer '{source}': {first_line(e)}") from e


class TransformersTokenizer:
    """A transformers tokenizer as the toolkit's ``list[str] -> LongTensor (B, L)``.

    Padded to the context length as the family was trained (SigLIP: ``max_length``, its pooled
    token is the last), truncated to it.
    """

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(
            texts,
            padding="max_length",
            max_length=context_length or self.context_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


def open_clip_hf_tokenizer(text_cfg: dict, folder: Path | None, override: str | None, what: str):
    """open_clip's ``HFTokenizer`` for a config naming ``hf_tokenizer_name`` (SigLIP, SigLIP2)."""
    from open_clip.tokenizer import HFTokenizer

    if override:
        source = override
    elif folder is not None and has_tokenizer_files(folder):
        source = str(folder)
    else:
        source = text_cfg["hf_tokenizer_name"]
    source = built_source(source)
    auto_tokenizer(source, what)  # local, cached or fetched now: one line if none of them
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    return HFTokenizer(
        str(source),
        context_length=int(text_cfg.get("context_length", 77)),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        local_files_only=True,
        **kwargs,
    )


# --- tokenizers built here (tiny models, tests) ---------------------------------------------


def tokenizer_corpus() -> list[str]:
    """A fixed English corpus: ImageNet's class names in four of CLIP's templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES[:4]]


def build_sentencepiece(folder: str | Path, vocab_size: int = 1000) -> Path:
    """A SigLIP-style SentencePiece tokenizer (T5's ids: pad 0, eos 1, unk 2; bytes for what it
    has not seen, so any caption round-trips) saved with ``save_pretrained``. Deterministic."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(folder / "spiece.model")).save_pretrained(str(folder))
    return folder


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges as OpenAI built them, from the BPE file open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, [tuple(m.split()) for m in merges]


def build_clip_bpe(folder: str | Path) -> Path:
    """CLIP's BPE tokenizer (49,408 tokens, the one OpenAI's checkpoints use) as a transformers
    ``CLIPTokenizer`` folder."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(folder))
    return folder

"""Image and caption embeddings of a training mix, computed once per model and mix.

Batched, fp32 out, through the feature cache (key: the model's weights, the mix, the
precision): the detectors, the report and the cleaning defense then share one encoding. Memory
grows with N x D only.
"""

from __future__ import annotations

import hashlib

import torch
from tqdm import tqdm

from clip_backdoor.core import precision as precision_mod
from clip_backdoor.data_scan.base import PairEmbeddings
from clip_backdoor.data_scan.mix import TrainingMix
from clip_backdoor.evaluation.features import FeatureCache, model_fingerprint


@torch.inference_mode()
def embed_mix(
    model,
    tokenizer,
    mix: TrainingMix,
    batch_size: int = 256,
    precision: str = "auto",
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> PairEmbeddings:
    precision = precision_mod.resolve(precision, next(model.parameters()).device)
    key = hashlib.sha1(
        "\n".join(["mix-pairs", model_fingerprint(model), mix.digest, precision]).encode()
    ).hexdigest()
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return PairEmbeddings(hit["images"].numpy(), hit["texts"].numpy())
    device = next(model.parameters()).device
    images, texts, captions = [], [], []
    starts = range(0, len(mix), batch_size)
    for start in tqdm(starts, disable=not progress, desc="embed pairs", leave=False):
        batch = [mix.pair(i) for i in range(start, min(start + batch_size, len(mix)))]
        pixels = torch.stack([image for image, _ in batch]).to(device)
        captions += [caption for _, caption in batch]
        tokens = tokenizer(captions[start:]).to(device)
        with precision_mod.autocast(precision, device):
            images.append(model.encode_image(pixels).float().cpu())
            texts.append(model.encode_text(tokens).float().cpu())
    mix._captions = captions
    tensors = {"images": torch.cat(images), "texts": torch.cat(texts)}
    if cache is not None:
        cache.put(key, tensors)
    return PairEmbeddings(tensors["images"].numpy(), tensors["texts"].numpy())

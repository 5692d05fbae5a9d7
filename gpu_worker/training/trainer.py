"""LoRA training with PEFT and a plain torch loop.

The cached base model (LoadedBase.model) is shared by every training in the process. PEFT
injects LoRA layers into it in place, so every path out of `train_lora` calls `unload()`
(which removes the LoRA layers without merging them), leaving the base exactly as it was.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .base_cache import BASE_MODEL_LOCK, LoadedBase
from .data import IGNORE_INDEX, Example, prepare_examples
from .errors import EmptyDataset, UnsupportedSetting

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
# Vocabulary-sized or full-weight modules: a GGUF LoRA adapter for llama.cpp cannot carry them
# (lm_head is tied to the embeddings in several supported models and llama.cpp ignores it).
_REFUSED_MODULES = {
    "lm_head": "the output head cannot be exported as a GGUF LoRA adapter",
    "embed_tokens": "token embeddings cannot be exported as a GGUF LoRA adapter",
}

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    epochs: int = 3
    learning_rate: float = 2e-4
    max_seq_length: int = 256
    batch_size: int = 4
    validation_split: float = 0.1
    seed: int = 42
    use_rslora: bool = False
    lora_dropout: float = 0.0
    samples: int | None = None
    # Only here so that a request for it is refused with a clear message (see validate()).
    modules_to_save: tuple[str, ...] = ()
    max_grad_norm: float = 1.0

    @classmethod
    def from_settings(
        cls, settings: dict[str, Any], *, rank: int, alpha: float, samples: int | None = None
    ) -> TrainConfig:
        """Build from the adapter item's `training` dict (lora_common TrainingSettings)."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in settings.items() if k in known}
        if "target_modules" in kwargs:
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        if "modules_to_save" in kwargs:
            kwargs["modules_to_save"] = tuple(kwargs["modules_to_save"] or ())
        return cls(**{**kwargs, "rank": rank, "alpha": alpha, "samples": samples})

    @property
    def scaling(self) -> float:
        """PEFT's multiplier on B @ A."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def validate(self) -> None:
        if self.modules_to_save:
            raise UnsupportedSetting(
                "modules_to_save is not supported: full-weight modules cannot be exported as a "
                "GGUF LoRA adapter"
            )
        if not self.target_modules:
            raise UnsupportedSetting("target_modules must not be empty")
        for name in self.target_modules:
            if name.split(".")[-1] in _REFUSED_MODULES:
                raise UnsupportedSetting(f"{name}: {_REFUSED_MODULES[name.split('.')[-1]]}")
        if self.rank < 1:
            raise UnsupportedSetting("rank must be >= 1")
        if not self.alpha > 0:
            raise UnsupportedSetting("alpha must be > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_length < 2:
            raise UnsupportedSetting("epochs, batch_size must be >= 1 and max_seq_length >= 2")
        if not 0.0 <= self.validation_split < 1.0:
            raise UnsupportedSetting("validation_split must be in [0, 1)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UnsupportedSetting("lora_dropout must be in [0, 1)")


@dataclass(frozen=True)
class TrainResult:
    training_loss: float  # mean step loss over the last epoch
    validation_loss: float | None
    validation_accuracy: float | None  # next-token accuracy on held-out completion tokens
    steps: int
    train_tokens: int  # non-padding tokens fed forward during training
    tokens_per_second: float
    n_train: int
    n_validation: int
    seconds: float
    first_epoch_loss: float = float("nan")
    n_dropped: int = 0
    loss_history: list[float] = field(default_factory=list)
    rank: int = 0
    alpha: float = 0.0
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """JSON-ready metrics for the version item / manifest (no per-step history)."""
        d = asdict(self)
        d.pop("loss_history")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def train_lora(
    base: LoadedBase,
    records: Sequence[dict[str, Any]],
    config: TrainConfig,
    out_dir: Path,
    init_adapter_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``records`` and save it (PEFT format) into ``out_dir``.

    ``init_adapter_dir`` continues from an earlier version's PEFT weights; its rank, alpha,
    rsLoRA flag and target modules must equal ``config``'s (the manifest states them).
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    config.validate()
    t_start = time.perf_counter()
    data = prepare_examples(
        records,
        base.tokenizer,
        add_bos=base.add_bos,
        max_seq_length=config.max_seq_length,
        validation_split=config.validation_split,
        seed=config.seed,
        samples=config.samples,
        architecture=base.architecture,
    )
    if not data.train:
        raise EmptyDataset(
            f"no trainable example among {data.n_records} records "
            f"({data.n_dropped} had no completion tokens within max_seq_length)"
        )
    if init_adapter_dir is not None:
        _check_init_compatible(Path(init_adapter_dir), config)

    model = base.model
    _check_targets_exist(model, config.target_modules, base.architecture)
    device = next(model.parameters()).device
    pad_id = _pad_id(base.tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rng_devices = [device] if device.type == "cuda" else []
    with BASE_MODEL_LOCK, torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        if init_adapter_dir is None:
            lora_config = LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                target_modules=list(config.target_modules),
                lora_dropout=config.lora_dropout,
                use_rslora=config.use_rslora,
                bias="none",
                task_type="CAUSAL_LM",
            )
            try:
                peft_model = get_peft_model(model, lora_config)
            except ValueError as e:  # e.g. a target module the architecture does not have
                _strip_lora(model)
                raise UnsupportedSetting(f"cannot apply LoRA to {base.architecture}: {e}") from e
        else:
            peft_model = PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
            if config.lora_dropout != _dropout_of(peft_model):
                _set_dropout(peft_model, config.lora_dropout)
        try:
            result = _run(peft_model, data.train, data.validation, config, device, pad_id, progress)
            # The adapter holds no embeddings; "auto" would look for a base config on the hub.
            peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
            _normalize_adapter_config(out_dir, base)
        finally:
            # Remove the LoRA layers again (no merge) so `base.model` is reusable as-is.
            peft_model.unload()
            _strip_lora(model)
            model.eval()
            model.requires_grad_(False)

    seconds = time.perf_counter() - t_start
    return TrainResult(
        **result,
        n_train=len(data.train),
        n_validation=len(data.validation),
        seconds=seconds,
        n_dropped=data.n_dropped,
        rank=config.rank,
        alpha=config.alpha,
        use_rslora=config.use_rslora,
        target_modules=list(config.target_modules),
    )


def _run(
    peft_model: Any,
    train: list[Example],
    validation: list[Example],
    config: TrainConfig,
    device: Any,
    pad_id: int,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    import torch

    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise UnsupportedSetting("no trainable LoRA parameters were created")
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step = 0
    tokens = 0
    history: list[float] = []
    epoch_means: list[float] = []
    t0 = time.perf_counter()
    peft_model.train()
    for epoch in range(config.epochs):
        order = list(range(len(train)))
        # Data order depends only on (seed, epoch): reruns see identical batches.
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        epoch_losses = []
        for b in range(steps_per_epoch):
            batch = [train[i] for i in order[b * config.batch_size : (b + 1) * config.batch_size]]
            input_ids, attn, labels = _collate(batch, pad_id, device)
            loss, _, _ = _loss(peft_model, input_ids, attn, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            step += 1
            tokens += int(attn.sum())
            value = float(loss.detach())
            epoch_losses.append(value)
            history.append(value)
            if progress is not None:
                progress(step, total_steps, value)
        epoch_means.append(sum(epoch_losses) / len(epoch_losses))
    train_seconds = time.perf_counter() - t0
    peft_model.eval()
    val_loss, val_acc = (None, None)
    if validation:
        val_loss, val_acc = evaluate(peft_model, validation, pad_id, config.batch_size)
    return {
        "training_loss": epoch_means[-1],
        "first_epoch_loss": epoch_means[0],
        "validation_loss": val_loss,
        "validation_accuracy": val_acc,
        "steps": step,
        "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 else 0.0,
        "loss_history": history,
    }


def evaluate(
    model: Any, examples: list[Example], pad_id: int, batch_size: int = 4
) -> tuple[float, float]:
    """(mean token loss, next-token accuracy) over the supervised tokens of ``examples``."""
    import torch

    device = next(model.parameters()).device
    total_loss = 0.0
    correct = 0
    count = 0
    with torch.no_grad():
        for b in range(0, len(examples), batch_size):
            input_ids, attn, labels = _collate(examples[b : b + batch_size], pad_id, device)
            loss, n_correct, n = _loss(model, input_ids, attn, labels)
            total_loss += float(loss) * n
            correct += n_correct
            count += n
    if count == 0:
        return float("nan"), float("nan")
    return total_loss / count, correct / count


def _collate(batch: list[Example], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return ids.to(device), attn.to(device), labels.to(device)


def _loss(model: Any, input_ids: Any, attn: Any, labels: Any) -> tuple[Any, int, int]:
    """Token-mean cross entropy over supervised positions, plus (n_correct, n_tokens).

    Logits are computed only where the *next* token is supervised: the output head of these
    models is vocabulary-sized (262k for Gemma 3), so projecting every position would dominate
    memory for no gain.
    """
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    out = model(input_ids=input_ids, attention_mask=attn, logits_to_keep=keep, use_cache=False)
    logits = out.logits
    if logits.dim() == 3:  # a model class that ignores a boolean logits_to_keep
        logits = logits[keep]
    tgt = targets[targets != IGNORE_INDEX]
    logits = logits.float()
    loss = F.cross_entropy(logits, tgt)
    with torch.no_grad():
        n_correct = int((logits.argmax(-1) == tgt).sum())
    return loss, n_correct, int(tgt.numel())


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def _strip_lora(model: Any) -> None:
    """Belt and braces after unload(): no PEFT bookkeeping may survive on the shared base."""
    if "peft_config" in vars(model):
        del model.peft_config
    leftovers = [n for n, _ in model.named_modules() if "lora_" in n]
    if leftovers:
        raise RuntimeError(f"LoRA layers left on the base model: {leftovers[:3]}")


def _check_targets_exist(model: Any, targets: Sequence[str], architecture: str) -> None:
    """Every requested module name must name linear layers of this architecture; PEFT itself
    only complains when *none* matches, and would silently train a subset."""
    import torch

    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise UnsupportedSetting(
            f"target modules {missing} do not exist in {architecture}; available: "
            f"{', '.join(sorted(linear_names - {'lm_head'}))}"
        )


def _check_init_compatible(init_dir: Path, config: TrainConfig) -> None:
    cfg_path = init_dir / "adapter_config.json"
    if not cfg_path.exists():
        raise UnsupportedSetting(f"init adapter has no adapter_config.json: {init_dir}")
    cfg = json.loads(cfg_path.read_text())
    prev = (
        int(cfg.get("r", 0)),
        float(cfg.get("lora_alpha", 0)),
        bool(cfg.get("use_rslora", False)),
        sorted(cfg.get("target_modules") or []),
    )
    want = (config.rank, float(config.alpha), config.use_rslora, sorted(config.target_modules))
    if prev != want:
        raise UnsupportedSetting(
            f"continuing training needs the same rank/alpha/use_rslora/target_modules as the "
            f"previous version: previous {prev}, requested {want}"
        )


def _dropout_of(peft_model: Any) -> float:
    cfg = peft_model.peft_config[peft_model.active_adapter]
    return float(cfg.lora_dropout)


def _set_dropout(peft_model: Any, p: float) -> None:
    import torch

    name = peft_model.active_adapter
    for module in peft_model.modules():
        drop = getattr(module, "lora_dropout", None)
        if isinstance(drop, torch.nn.ModuleDict) and name in drop:
            drop[name] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def _normalize_adapter_config(out_dir: Path, base: LoadedBase) -> None:
    """Replace the local cache path PEFT records as the base with a stable identifier."""
    path = out_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = f"gguf-sha256:{base.sha256}"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))

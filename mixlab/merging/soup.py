"""Weight averaging for model soups, streamed tensor by tensor (big ones in row chunks).

Ingredients are Hugging Face model folders with safetensors weights (one file, or shards with
``model.safetensors.index.json``). ``average`` writes θ = Σ w_i θ_i / Σ w_i for every tensor, accumulating in
float32 (float64 stays float64) and casting back to the stored dtype. It opens one ingredient file per tensor read
and closes it straight after (safetensors memory-maps files, and mapped pages count as resident while a file is
open), reads big tensors in row chunks (``CHUNK_ELEMENTS``), and writes each output shard through its own
safetensors writer as the chunks come, so the peak memory is a few chunks, whatever the model size or the number
of ingredients.

``check_compatible`` refuses ingredients that cannot be averaged meaningfully (see its docstring for the rules);
``merge_lora`` turns a LoRA adapter folder into a full model first, since averaging the A and B factors separately
is not averaging the updates B·A.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mixlab.errors import UserError
from mixlab.paths import expand_user

INDEX_NAME = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMENTS = 1 << 20
"""Rows of a tensor are averaged in chunks of about this many elements (4 MB in float32). Bigger chunks save file
opens but cost memory: glibc keeps freed chunk-sized blocks, so the peak grows with the chunk size (bench)."""
COSINE_TENSORS = 3
"""How many of the largest 2-D weight matrices the initialisation check compares."""

SHAPE_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "image_size",
        "patch_size",
        "num_channels",
        "projection_dim",
        "tie_word_embeddings",
        "n_embd",
        "n_layer",
        "n_head",
        "d_model",
        "embed_dim",
    }
)
"""config.json keys (at any depth, e.g. ``text_config.hidden_size``) that must agree between ingredients."""

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_NATIVE_ADD = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_SKIP_FILES = {INDEX_NAME, "pytorch_model.bin.index.json", "adapter_config.json", "training_args.bin"}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives (file name inside the folder) and its stored dtype (safetensors name) and shape."""

    file: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _torch_dtype(self.dtype).itemsize


@dataclass
class Checkpoint:
    """A model folder's tensor table, read from the safetensors headers only (no weights loaded)."""

    dir: Path
    tensors: dict[str, TensorInfo]

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"soup ingredient {path} is not a directory (expected a Hugging Face model folder)")
        tensors: dict[str, TensorInfo] = {}
        for file in weight_files(path):
            with safe_open(path / file, framework="pt") as f:
                for name in f.keys():
                    s = f.get_slice(name)
                    tensors[name] = TensorInfo(file, s.get_dtype(), tuple(s.get_shape()))
        return cls(path, tensors)

    def read(self, name: str) -> torch.Tensor:
        """One tensor, copied out of the file (the file is closed again, so nothing stays mapped)."""
        return _read_rows(self, name, None)


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder (adapter_config.json, no full model weights)."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        return False
    try:
        return not weight_files(path)
    except UserError:
        return True


def weight_files(path: Path) -> list[str]:
    """The safetensors files holding a folder's model weights (from the index when sharded)."""
    index = path / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise UserError(f"{path}: {INDEX_NAME} lists {missing[0]}, which is missing. Re-save the model.")
        return files
    if (path / "model.safetensors").is_file():
        return ["model.safetensors"]
    files = sorted(p.name for p in path.glob("*.safetensors") if not p.name.startswith("adapter_model"))
    if files:
        return files
    if (path / "adapter_config.json").is_file():
        raise UserError(f"{path} is a LoRA adapter, not a full model: merge it first (mixlab.merging.merge_lora).")
    if any(path.glob("*.bin")):
        raise UserError(
            f"{path} has PyTorch .bin weights only; soups read safetensors. Convert with "
            "`AutoModel...from_pretrained(path).save_pretrained(path, safe_serialization=True)`."
        )
    raise UserError(f"{path} has no model weights (*.safetensors)")


def _torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise UserError(f"safetensors dtype {name} is not supported by the soup (supported: {', '.join(_DTYPES)})")
    return _DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


# ---- compatibility ------------------------------------------------------------------------------------------


def _as_named(ingredients: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    if isinstance(ingredients, Mapping):
        return {str(k): Path(v) for k, v in ingredients.items()}
    return {str(p): Path(p) for p in ingredients}


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"soup ingredient {path} has no config.json: it is not a Hugging Face model folder")
    return json.loads(file.read_text())


def _shape_fields(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Shape-relevant config fields, nested ones as dotted keys (``text_config.hidden_size``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_shape_fields(value, f"{prefix}{key}."))
        elif key in SHAPE_KEYS:
            out[f"{prefix}{key}"] = value
    return out


def _compare_tensors(a: str, ta: dict[str, TensorInfo], b: str, tb: dict[str, TensorInfo], fix: str) -> None:
    only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    if only_a or only_b:
        which, other, name = (a, b, only_a[0]) if only_a else (b, a, only_b[0])
        raise UserError(
            f"{which!r} has tensor `{name}`, which {other!r} lacks "
            f"({len(only_a) + len(only_b)} tensors differ): different architectures cannot be averaged. {fix}"
        )
    for name in sorted(ta):
        if ta[name].shape != tb[name].shape:
            raise UserError(
                f"tensor `{name}` has shape {list(ta[name].shape)} in {a!r} but {list(tb[name].shape)} in {b!r}: "
                f"different architectures cannot be averaged. {fix}"
            )
        if ta[name].dtype != tb[name].dtype:
            raise UserError(
                f"tensor `{name}` is {ta[name].dtype} in {a!r} but {tb[name].dtype} in {b!r}. Save the ingredients "
                "in one dtype (from_pretrained(..., dtype=...) then save_pretrained) before making a soup."
            )


def _largest_matrices(tensors: dict[str, TensorInfo], k: int = COSINE_TENSORS) -> list[str]:
    """The k largest 2-D floating-point tensors, by element count, ties by name."""
    matrices = [n for n, t in tensors.items() if len(t.shape) == 2 and _torch_dtype(t.dtype).is_floating_point]
    return sorted(matrices, key=lambda n: (-tensors[n].numel, n))[:k]


def _gram(checkpoints: Sequence[Checkpoint], name: str, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Dot products between the flattened tensor `name` of every checkpoint, read in row chunks (float64)."""
    rows, cols = checkpoints[0].tensors[name].shape
    step = max(1, chunk_elements // max(1, cols))
    gram = torch.zeros(len(checkpoints), len(checkpoints), dtype=torch.float64)
    for start in range(0, rows, step):
        parts = []
        for c in checkpoints:
            with safe_open(c.dir / c.tensors[name].file, framework="pt") as f:
                parts.append(f.get_slice(name)[start : min(start + step, rows)].to(torch.float64).reshape(-1))
        x = torch.stack(parts)
        gram += x @ x.T
    return gram


def _cosine(gram: torch.Tensor, i: int, j: int) -> float:
    ni, nj = float(gram[i, i]), float(gram[j, j])
    if ni == 0 or nj == 0:
        return 1.0 if ni == nj else 0.0
    return float(gram[i, j]) / (ni * nj) ** 0.5


def check_compatible(
    ingredients: Mapping[str, str | Path] | Sequence[str | Path],
    *,
    base: str | Path | None = None,
    min_cosine: float = 0.2,
) -> dict[str, Any]:
    """Refuse ingredients that cannot be averaged; return the cosine similarities that were checked.

    Rules, each a UserError naming the two ingredients and the first difference:

    * same ``architectures`` and the same shape-relevant config fields (``SHAPE_KEYS``, at any depth; a key only
      one config writes is not compared);
    * the same tensor names, shapes and dtypes;
    * the same initialisation: on the ``COSINE_TENSORS`` largest 2-D weight matrices, the cosine similarity of
      every pair of ingredients is at least ``min_cosine``. Fine-tunes of one base sit near 1; independent random
      or pre-trained initialisations near 0. With ``base`` (the common parent model), every ingredient must also
      reach ``min_cosine`` against it on those matrices. ``min_cosine=-1`` turns the check off.
    """
    named = _as_named(ingredients)
    if not named:
        raise UserError("a soup needs at least one ingredient")
    fix = "A soup averages models fine-tuned from one base model; remove the odd one from the soup's ingredients."
    names = list(named)
    ref = names[0]
    ref_fields = _shape_fields(_config(named[ref]))
    checkpoints = {n: Checkpoint.open(p) for n, p in named.items()}
    for other in names[1:]:
        fields = _shape_fields(_config(named[other]))
        for key, value in ref_fields.items():
            if key in fields and fields[key] != value:
                raise UserError(
                    f"ingredients {ref!r} and {other!r} differ in config.json field `{key}` "
                    f"({value!r} vs {fields[key]!r}): different architectures cannot be averaged. {fix}"
                )
        _compare_tensors(ref, checkpoints[ref].tensors, other, checkpoints[other].tensors, fix)

    report: dict[str, Any] = {"tensors": _largest_matrices(checkpoints[ref].tensors), "cosine": {}}
    group = [checkpoints[n] for n in names]
    base_ckpt = None
    if base is not None:
        base_ckpt = Checkpoint.open(base)
        for t in report["tensors"]:
            have = base_ckpt.tensors.get(t)
            if have is None or have.shape != checkpoints[ref].tensors[t].shape:
                raise UserError(
                    f"base model {str(base)!r} has no tensor `{t}` of shape {list(checkpoints[ref].tensors[t].shape)}"
                    f" like ingredient {ref!r}: it is not the ingredients' parent. Point `base` at the model they "
                    "were fine-tuned from."
                )
        group.append(base_ckpt)
    for t in report["tensors"]:
        gram = _gram(group, t)
        for i, a in enumerate(names):
            if base_ckpt is not None:
                cos = _cosine(gram, i, len(names))
                report["cosine"][f"{a}~base:{t}"] = round(cos, 6)
                if cos < min_cosine:
                    raise UserError(
                        f"ingredient {a!r} does not look fine-tuned from base {str(base)!r}: cosine similarity of "
                        f"`{t}` is {cos:.3f} (< min_cosine {min_cosine}). Soup only models fine-tuned from the "
                        "same base, or lower `min_cosine` if you are sure."
                    )
            for j in range(i + 1, len(names)):
                b = names[j]
                cos = _cosine(gram, i, j)
                report["cosine"][f"{a}~{b}:{t}"] = round(cos, 6)
                if cos < min_cosine:
                    raise UserError(
                        f"ingredients {a!r} and {b!r} look like different initialisations: cosine similarity of "
                        f"`{t}` is {cos:.3f} (< min_cosine {min_cosine}). A soup only helps models fine-tuned from "
                        "the same base; remove one, or lower `min_cosine` if you are sure."
                    )
    return report


# ---- averaging ----------------------------------------------------------------------------------------------


def _plan_shards(tensors: dict[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """Tensor names (sorted) split into consecutive groups of at most max_bytes (a bigger tensor goes alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def _write_safetensors(
    path: Path,
    names: list[str],
    tensors: dict[str, TensorInfo],
    produce: Callable[[str], Iterable[torch.Tensor]],
    on_tensor: Callable[[], Any] | None = None,
) -> None:
    """Write a safetensors file whose header is known up front; each tensor's bytes come in row chunks."""
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        info = tensors[name]
        header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            info, written = tensors[name], 0
            for chunk in produce(name):
                if _dtype_name(chunk.dtype) != info.dtype:
                    raise RuntimeError(f"{name}: produced {chunk.dtype}, planned {info.dtype}")
                data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(data)  # type: ignore[arg-type]  # numpy's stubs declare the buffer protocol on 3.12+ only
                written += data.nbytes
                del chunk, data
            if written != info.nbytes:
                raise RuntimeError(f"{name}: wrote {written} bytes, planned {info.nbytes}")
            if on_tensor is not None:
                on_tensor()


def _row_chunks(shape: tuple[int, ...], chunk_elements: int) -> list[slice | None]:
    """Slices over the first dimension, each of at most ~chunk_elements elements; [None] for a scalar."""
    if not shape:
        return [None]
    step = max(1, chunk_elements // max(1, prod(shape[1:])))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def _read_rows(c: Checkpoint, name: str, rows: slice | None) -> torch.Tensor:
    with safe_open(c.dir / c.tensors[name].file, framework="pt") as f:
        return (f.get_tensor(name) if rows is None else f.get_slice(name)[rows]).clone()


def _mean_chunks(
    checkpoints: Sequence[Checkpoint], weights: Sequence[float], name: str, chunk_elements: int = CHUNK_ELEMENTS
) -> Iterator[torch.Tensor]:
    """Σ w_i θ_i / Σ w_i for one tensor, row chunk by row chunk, in float32 (float64 kept), in the stored dtype."""
    dtype = _torch_dtype(checkpoints[0].tensors[name].dtype)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for rows in _row_chunks(checkpoints[0].tensors[name].shape, chunk_elements):
        if not dtype.is_floating_point:  # integer buffers (ids, masks): must agree, kept as they are
            first = _read_rows(checkpoints[0], name, rows)
            for c in checkpoints[1:]:
                if not torch.equal(first, _read_rows(c, name, rows)):
                    raise UserError(f"integer tensor `{name}` differs between {checkpoints[0].dir} and {c.dir}")
            yield first
            continue
        acc: torch.Tensor | None = None
        for c, w in zip(checkpoints, weights, strict=True):
            with safe_open(c.dir / c.tensors[name].file, framework="pt") as f:
                t = f.get_tensor(name) if rows is None else f.get_slice(name)[rows]
                if acc is None:
                    acc = torch.zeros(t.shape, dtype=acc_dtype)
                acc.add_(t if t.dtype in _NATIVE_ADD else t.to(acc_dtype), alpha=w)
                del t
        assert acc is not None
        yield acc.div_(sum(weights)).to(dtype)
        del acc


def copy_extra_files(src: Path, dst: Path, *, overwrite: bool = True) -> None:
    """Copy a model folder's top-level non-weight files (config, tokenizer, processor, chat template...)."""
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name in _SKIP_FILES or p.name.startswith("adapter_model"):
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or ((dst / p.name).exists() and not overwrite):
            continue
        shutil.copy2(p, dst / p.name)


def average(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_tensor: Callable[[], Any] | None = None,
) -> Path:
    """Write the (weighted) average of model folders to ``out_dir``, streamed in row chunks; return it.

    Output: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes``
    with ``model.safetensors.index.json``; dtypes as stored; the non-weight files of the first folder. Tied or
    shared tensors are averaged as the files store them. The folder appears only when complete (written under a
    ``.partial`` sibling, then renamed); an existing ``out_dir`` is an error. Tensor names, shapes and dtypes must
    match (``check_compatible`` checks that and more, with better messages). Tensors are averaged in row chunks of
    about ``chunk_elements`` elements. ``on_tensor`` is called after each tensor.
    """
    if not dirs:
        raise UserError("nothing to average: no ingredients")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"soup output {out_dir} already exists; remove it or choose another folder")
    weights = [1.0] * len(dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dirs) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need {len(dirs)} non-negative weights with a positive sum, got {weights}")
    checkpoints = [Checkpoint.open(d) for d in dirs]
    ref = checkpoints[0]
    for c in checkpoints[1:]:
        _compare_tensors(str(ref.dir), ref.tensors, str(c.dir), c.tensors, "")

    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shards = _plan_shards(ref.tensors, max_shard_bytes)
    weight_map: dict[str, str] = {}

    def produce(name: str) -> Iterator[torch.Tensor]:
        return _mean_chunks(checkpoints, weights, name, chunk_elements)

    for i, names in enumerate(shards, start=1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(tmp / file, names, ref.tensors, produce, on_tensor=on_tensor)
        weight_map.update(dict.fromkeys(names, file))
    if len(shards) > 1:
        total = sum(t.nbytes for t in ref.tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    copy_extra_files(ref.dir, tmp)
    tmp.rename(out_dir)
    return out_dir


def running_mean(soup_dir: str | Path, n: int, new_dir: str | Path, out_dir: str | Path, **kwargs: Any) -> Path:
    """θ' = (n·θ_soup + θ_new) / (n + 1): add one ingredient to an n-ingredient soup, streamed (see ``average``).

    Exact in float32; in 16-bit dtypes each call rounds the soup once more, so ``average`` over the members is the
    more precise way to build a k-ingredient soup.
    """
    if n < 1:
        raise ValueError(f"a soup has at least one ingredient, got n={n}")
    return average([soup_dir, new_dir], out_dir, weights=[n, 1], **kwargs)


# ---- LoRA ---------------------------------------------------------------------------------------------------


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None) -> Path:
    """Merge a PEFT LoRA adapter into its base (W + (α/r)·B·A) and save a full model folder to ``out_dir``.

    The base is ``base`` or the adapter's ``base_model_name_or_path``, a local model folder. The merged model keeps
    the base's stored dtype; tokenizer and processor files come from the base (or the adapter folder if it has
    them). Peak memory: one model. An existing ``out_dir`` is an error.
    """
    import transformers
    from peft import PeftModel

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.exists():
        raise UserError(f"merged-adapter output {out_dir} already exists; remove it or choose another folder")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base_path = expand_user(base or adapter_config.get("base_model_name_or_path") or "")
    if not (base_path / "config.json").is_file():
        raise UserError(
            f"LoRA adapter {adapter_dir}: its base model {str(base_path)!r} is not a local model folder. Download the"
            " base (e.g. `hf download <repo> --local-dir DIR`) and set `base_model_name_or_path` in "
            "adapter_config.json to that folder."
        )
    architectures = _config(base_path).get("architectures") or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    if model_cls is None:
        model_cls = transformers.AutoModel
    model = model_cls.from_pretrained(base_path, dtype="auto")
    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot apply LoRA adapter {adapter_dir} to base {base_path}: {e}") from e
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(tmp)
    del merged, model
    copy_extra_files(adapter_dir, tmp, overwrite=False)
    copy_extra_files(base_path, tmp, overwrite=False)
    tmp.rename(out_dir)
    return out_dir

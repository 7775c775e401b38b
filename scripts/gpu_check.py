"""One-call GPU check: LLaVA SFT (DeepSpeed ZeRO-2, bf16) through mixlab's trainer, then scoring; JSON figures.

    python scripts/gpu_check.py run              # on a CUDA GPU: CLIP-L/14-336 + 1.1B Llama, see scripts/gpu_check.sh
    python scripts/gpu_check.py run --cpu-smoke  # the same code on a tiny shape, fp32, no DeepSpeed, seconds on a CPU
    python scripts/gpu_check.py pins [--build]   # the pinned wheels of scripts/gpu_wheels.txt (binary / to build)
    python scripts/gpu_check.py wheels .whl      # check a wheel folder against the pins and the device image
    python scripts/gpu_check.py preflight        # on the device: installed versions against every carried pin

Nothing is downloaded: the model is built from config with a locally trained tokenizer (as mixlab.models.tiny does),
the samples are synthetic images with short conversations. Each training run (one per attention kernel) ends with one
JSON line: tokens/s, model FLOPs utilisation, peak memory, scoring throughput; $OUT/gpu_check.json holds them as a list.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WHEEL_LIST = REPO / "scripts" / "gpu_wheels.txt"
ZERO2 = REPO / "recipes" / "deepspeed" / "zero2.json"

# ---- peak FLOPs and MFU ----------------------------------------------------------------------------------------

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets (their "with sparsity" figures halved). Rules are
# tried in order: every substring must occur in torch.cuda.get_device_name() (case-insensitive).
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], str, float]] = [
    (("gh200",), "GH200", 989.4),
    (("h200", "nvl"), "H200 NVL", 835.5),
    (("h200",), "H200 SXM", 989.4),
    (("h100", "nvl"), "H100 NVL", 835.5),
    (("h100", "pcie"), "H100 PCIe", 756.5),
    (("h100",), "H100 SXM", 989.4),
    (("h800",), "H800 SXM", 989.4),
    (("a100",), "A100", 312.0),
    (("l40s",), "L40S", 362.1),
    (("b200",), "B200", 2250.0),
]


def peak_bf16_flops(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 peak in FLOP/s, the table's label) for a CUDA device name, or None when the name is not known."""
    name = device_name.lower()
    for needles, label, tflops in PEAK_BF16_TFLOPS:
        if all(n in name for n in needles):
            return tflops * 1e12, label
    return None


def train_flops_per_second(
    n_lm: int, n_vision: int, tokens_per_s: float, patches_per_s: float, *, vision_trained: bool = False
) -> float:
    """Model FLOP/s of LLaVA training, the 6·N·D rule applied per part.

    The language model and projector (`n_lm` parameters, the input embedding table left out: it is a lookup) see
    every token of the sequence, image tokens included, forward and backward: 6·n_lm per token. The vision tower
    (`n_vision`) sees each image's patches (+1 class token): forward only (2·n_vision) when frozen, 6· when trained.
    Attention's sequence-squared term is left out (a few per cent at LLaVA's ~650-token sequences).
    """
    return 6.0 * n_lm * tokens_per_s + (6.0 if vision_trained else 2.0) * n_vision * patches_per_s


def mfu(flops_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak (None when the peak is unknown)."""
    if not peak_flops or peak_flops <= 0:
        return None
    return flops_per_s / peak_flops


def measure_matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` fp32 n×n×n matrix products on the CPU: the smoke run's stand-in peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


# ---- the wheel list and its closure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One line of scripts/gpu_wheels.txt."""

    name: str  # normalised (PEP 503)
    version: str | None  # None for "skip"
    kind: str = "binary"  # "binary": a wheel from PyPI; "build": PyPI has only an sdist; "skip": left behind


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' made one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_list(text: str) -> list[Pin]:
    """The entries of a wheel list, one a line, '#' comments, each name once: `NAME==VERSION` (a wheel),
    `NAME==VERSION build` (built here from the sdist) or `NAME skip` (a requirement deliberately not carried)."""
    pins: dict[str, Pin] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *flags = line.split()
        name, sep, version = spec.partition("==")
        if flags == ["skip"] and not sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            pin = Pin(normalise(name), None, "skip")
        elif flags not in ([], ["build"]):
            raise ValueError(f"line {lineno}: {raw.strip()!r}: the flag must be 'build' (or 'skip' without a version)")
        elif not sep or not name or not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version):
            raise ValueError(f"line {lineno}: {raw.strip()!r} is not NAME==VERSION")
        else:
            pin = Pin(normalise(name), version, "build" if flags else "binary")
        if pin.name in pins:
            raise ValueError(f"line {lineno}: {pin.name} is listed twice (two versions stop the whole install)")
        pins[pin.name] = pin
    return list(pins.values())


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name."""
    parts = Path(filename).name.split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"{filename} is not a wheel file name")
    return normalise(parts[0]), parts[1]


# The device image's Python packages (KINDS.md, 'cuda' image, read 2026-11-17), and the versions recorded there.
DEVICE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
    pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
    tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
    toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
    triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp""".split()
)
DEVICE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "peft": None,
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
# The environment the carried wheels are installed into (python3 on the device).
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def wheel_requirements(path: Path, markers: dict[str, str] = DEVICE_MARKERS) -> list[Any]:
    """The Requires-Dist of a wheel that apply in `markers`' environment (extras left out), as Requirements."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(markers):
                reqs.append(req)
    return reqs


def check_wheel_dir(
    wheel_dir: Path,
    pins: list[Pin],
    device_packages: frozenset[str] = DEVICE_PACKAGES,
    device_versions: dict[str, str | None] = DEVICE_VERSIONS,
) -> tuple[list[str], list[str]]:
    """(problems, notes) of a wheel folder: each pin there exactly once and nothing else; every requirement of every
    wheel carried (in a version that satisfies it) or on the device image (its recorded version satisfying it, else a
    note to check there: `preflight` does)."""
    problems: list[str] = []
    notes: list[str] = []
    found: dict[str, list[Path]] = {}
    for path in sorted(wheel_dir.glob("*.whl")):
        found.setdefault(wheel_name_version(path.name)[0], []).append(path)
    carried = {p.name: p.version for p in pins if p.version}
    skipped = {p.name for p in pins if p.kind == "skip"}
    for pin in pins:
        if pin.kind == "skip":
            continue
        paths = found.get(pin.name, [])
        versions = [wheel_name_version(p.name)[1] for p in paths]
        if versions != [pin.version]:
            problems.append(f"{pin.name}=={pin.version}: found {versions or 'no wheel'}")
    for name in sorted(set(found) - set(carried)):
        problems.append(f"{name}: a wheel that is not pinned ({[p.name for p in found[name]]})")
    for name, paths in sorted(found.items()):
        if name not in carried:
            continue
        for req in wheel_requirements(paths[0]):
            dep = normalise(req.name)
            if dep in skipped:
                notes.append(f"{name} needs {req}: left behind on purpose (a 'skip' line)")
            elif dep in carried:
                if not req.specifier.contains(carried[dep], prereleases=True):
                    problems.append(f"{name} needs {req}, carried {dep}=={carried[dep]}")
            elif dep not in device_packages:
                problems.append(f"{name} needs {req}: neither carried nor on the device image")
            elif str(req.specifier):
                known = device_versions.get(dep)
                if known is None:
                    notes.append(f"{name} needs {req}; the device's version is not recorded (preflight checks it)")
                elif not req.specifier.contains(known, prereleases=True):
                    problems.append(f"{name} needs {req}, the device has {dep}=={known}")
    return problems, notes


def installed_problems(pins: list[Pin]) -> list[str]:
    """In this Python: each pinned distribution installed at its version, and all their requirements satisfied."""
    from importlib import metadata

    from packaging.requirements import Requirement

    problems = []
    skipped = {p.name for p in pins if p.kind == "skip"}
    for pin in pins:
        if pin.kind == "skip":
            continue
        try:
            dist = metadata.distribution(pin.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{pin.name}: not installed")
            continue
        if dist.version != pin.version:
            problems.append(f"{pin.name}: {dist.version} installed, {pin.version} pinned (shadowed?)")
        for line in dist.requires or []:
            req = Requirement(line)
            if normalise(req.name) in skipped or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{pin.name} needs {req}: not installed")
                continue
            if not req.specifier.contains(have, prereleases=True):
                problems.append(f"{pin.name} needs {req}: {have} installed")
    return problems


# ---- model and data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The sizes of a LLaVA built from config."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int  # the LM's embedding rows: padded past the local tokenizer's size, as in a real checkpoint
    max_positions: int

    @property
    def image_tokens(self) -> int:
        """Image tokens per image in the LM's sequence (the class token dropped)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def patches(self) -> int:
        """Positions the vision tower computes per image (the class token included)."""
        return self.image_tokens + 1


# LLaVA-1.5's vision tower (CLIP ViT-L/14 at 336 px: 576 image tokens) on a TinyLlama-1.1B-shaped language model.
GPU_SHAPE = Shape(336, 14, 1024, 4096, 24, 16, 2048, 5632, 22, 32, 4, 32000, 2048)
SMOKE_SHAPE = Shape(32, 8, 32, 64, 2, 2, 64, 128, 2, 4, 2, 512, 512)


def build_processor(shape: Shape, corpus: list[str]) -> Any:
    """mixlab's tiny-model processor (a BPE tokenizer trained on `corpus`, the tiny chat template) at `shape`'s size."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from mixlab.models.templates import TINY_CHAT_TEMPLATE
    from mixlab.models.tiny import _train_tokenizer

    tokenizer = _train_tokenizer(corpus, min(shape.vocab_size, 2000))
    if len(tokenizer) > shape.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size {shape.vocab_size}")
    size = shape.image_size
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def llava_config(shape: Shape, tokenizer: Any) -> Any:
    """The LlavaConfig of `shape` (CLIP vision tower, Llama language model), with `tokenizer`'s special ids."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from mixlab.models.tiny import BOS, EOS, IMAGE, PAD

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, IMAGE)}
    vision = CLIPVisionConfig(
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        projection_dim=min(768, shape.vision_hidden),
    )
    text = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,  # LLaVA-1.5's choice
        projector_hidden_act="gelu",
    )


def build_llava(out_dir: Path, shape: Shape, corpus: list[str], *, device: str, dtype: Any, seed: int = 0) -> Path:
    """A random-init LLaVA of `shape` with mixlab's tiny tokenizer and processor, saved as a HF dir; returns it.

    The weights are initialised on `device` (seconds on a GPU for 1.4B parameters) and saved in `dtype`.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(shape, corpus)
    config = llava_config(shape, processor.tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    model.to(dtype)
    text = config.get_text_config()
    model.generation_config.pad_token_id = text.pad_token_id
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = text.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out_dir


QUESTIONS = [
    ("What color is the {shape}?", "The {shape} is {colour}."),
    ("Describe the image.", "A {colour} {shape} on a light background, near the {pos} of the picture."),
    ("Where is the {shape}?", "It is near the {pos}. Nothing else is in the image."),
]


def make_samples(n: int, root: Path, image_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """n synthetic LLaVA samples: a coloured square on a light background, two question/answer turns about it."""
    from PIL import Image

    from mixlab.toyworld.vocab import COLORS

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(COLORS)
    samples = []
    for i in range(n):
        colour = names[i % len(names)]
        img = Image.new("RGB", (image_size, image_size), tuple(rng.randint(200, 255) for _ in range(3)))
        side = rng.randint(image_size // 4, image_size // 2)
        x, y = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
        img.paste(COLORS[colour], (x, y, x + side, y + side))
        path = root / f"{i}.png"
        img.save(path)
        pos = ("left" if x + side / 2 < image_size / 2 else "right") + (" top" if y < image_size / 2 else " bottom")
        turns = []
        for k, (q, a) in enumerate(rng.sample(QUESTIONS, 2)):
            fill = {"shape": "square", "colour": colour, "pos": pos}
            turns += [
                {"from": "human", "value": ("<image>\n" if k == 0 else "") + q.format(**fill)},
                {"from": "gpt", "value": a.format(**fill)},
            ]
        samples.append(
            {
                "id": f"gpu_check/{i}",
                "source": "gpu_check",
                "category": "color",
                "image": str(path),
                "conversations": turns,
                "noisy": False,
            }
        )
    return samples


def corpus_of(samples: list[dict[str, Any]]) -> list[str]:
    """The tokenizer's training text: every turn of every sample."""
    return [t["value"].replace("<image>", "") for s in samples for t in s["conversations"]]


# ---- the measured runs ------------------------------------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory(reset: bool = False) -> tuple[float, str]:
    """(GiB, kind): CUDA's max allocated since the last reset, else this process's max resident set size."""
    import torch

    if torch.cuda.is_available():
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 2**30, "cuda_max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, "cpu_max_rss"


def steady_rate(stamps: list[tuple[int, float]], warmup_steps: int) -> tuple[float, int]:
    """(steps per second, steps counted) after the first `warmup_steps`, from (global_step, time) stamps."""
    after = [(s, t) for s, t in stamps if s >= warmup_steps]
    if len(after) < 2:
        after = stamps[-2:] if len(stamps) >= 2 else stamps
    if len(after) < 2 or after[-1][1] <= after[0][1]:
        return 0.0, 0
    steps = after[-1][0] - after[0][0]
    return steps / (after[-1][1] - after[0][1]), steps


def collate_rate(processor: Any, samples: list[dict[str, Any]], batch_size: int, batches: int = 3) -> float:
    """Samples/s of mixlab's training collator alone (image loading, processing, templating, masks) on the CPU."""
    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator

    collator = VisionCollator(processor)
    rows = [sample_to_row(s) for s in samples[: batch_size * (batches + 1)]]
    collator(rows[:batch_size])  # warm-up
    t0 = time.perf_counter()
    done = 0
    for b in range(1, batches + 1):
        chunk = rows[b * batch_size : (b + 1) * batch_size]
        if chunk:
            collator(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - t0) if done else 0.0


def train_and_score(
    base: Path, samples: list[dict[str, Any]], work: Path, args: argparse.Namespace, shape: Shape, attn: str
) -> dict[str, Any]:
    """One SFT run through mixlab's train_llava, then answer_nll scoring of the trained model; the figures."""
    import gc

    import torch

    from mixlab.models.loading import load_model
    from mixlab.models.sample_scores import answer_nll
    from mixlab.training.sft import SFTSettings, train_llava

    on_cuda = torch.cuda.is_available()
    use_ds = {"auto": on_cuda, "on": True, "off": False}[args.deepspeed]
    deepspeed = str(ZERO2) if use_ds else None
    settings = SFTSettings(
        epochs=1.0,
        learning_rate=1e-5,
        batch_size=args.batch_size,
        warmup_ratio=0.0,
        deepspeed=deepspeed,
        attn_implementation=attn,
        save_steps=10**9,  # no mid-run checkpoints: they would be timed as training
        logging_steps=10**9,
    )
    stamps: list[tuple[int, float]] = []

    def progress(step: int, total: int) -> None:
        _sync()
        stamps.append((step, time.perf_counter()))

    gc.collect()
    _peak_memory(reset=True)
    out = work / f"train-{attn}"
    result = train_llava(samples, base, out, settings, progress=progress)
    peak_gib, peak_kind = _peak_memory()
    steps = result["steps"]
    tokens_per_step = (result["tokens_per_second"] or 0.0) * result["seconds"] / max(steps, 1)
    steps_per_s, steady_steps = steady_rate(stamps, args.warmup_steps)
    tokens_per_s = steps_per_s * tokens_per_step
    images_per_s = steps_per_s * args.batch_size

    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    model, processor = load_model(out / "model", attn_implementation=attn)
    n_total = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    n_embed = model.get_input_embeddings().weight.numel()
    score_samples = samples[: args.score_samples]
    answer_nll(model, processor, score_samples[: args.score_batch_size], batch_size=args.score_batch_size)  # warm-up
    _sync()
    t0 = time.perf_counter()
    nll = answer_nll(model, processor, score_samples, batch_size=args.score_batch_size)
    _sync()
    score_seconds = time.perf_counter() - t0
    collate_sps = collate_rate(processor, samples, args.batch_size)

    if on_cuda:
        device_name = torch.cuda.get_device_name()
        looked_up = peak_bf16_flops(device_name)
        env_peak = os.environ.get("GPU_CHECK_PEAK_TFLOPS")
        if env_peak:
            peak, peak_source = float(env_peak) * 1e12, "GPU_CHECK_PEAK_TFLOPS"
        elif looked_up:
            peak, peak_source = looked_up[0], f"table: {looked_up[1]} dense bf16"
        else:
            peak, peak_source = None, f"unknown device {device_name!r}: set GPU_CHECK_PEAK_TFLOPS"
    else:
        import platform

        device_name = platform.processor() or platform.machine()
        peak, peak_source = measure_matmul_flops(), "measured: best fp32 512^3 matmul on this CPU"
    flops = train_flops_per_second(n_total - n_vision - n_embed, n_vision, tokens_per_s, images_per_s * shape.patches)
    del model
    gc.collect()
    return {
        "check": "gpu_check",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": device_name,
        "attn": attn,
        "deepspeed": "zero2" if deepspeed else None,
        "dtype": "bf16" if on_cuda else "fp32",
        "hub_kernels": os.environ.get("USE_HUB_KERNELS", "YES"),
        "shape": asdict(shape),
        "n_params": n_total,
        "n_params_vision": n_vision,
        "samples": len(samples),
        "batch_size": args.batch_size,
        "steps": steps,
        "steady_steps": steady_steps,
        "tokens_per_step": round(tokens_per_step, 1),
        "train_loss": result["train_loss"],
        "train_seconds": round(result["seconds"], 3),
        "tokens_per_second": result["tokens_per_second"],  # whole run (train_llava's figure: warm-up included)
        "tokens_per_second_steady": tokens_per_s,  # after --warmup-steps steps
        "model_tflops_per_second": flops / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        "mfu": mfu(flops, peak),
        "peak_memory_gib": peak_gib,
        "peak_memory_kind": peak_kind,
        "score_samples": len(score_samples),
        "score_batch_size": args.score_batch_size,
        "score_samples_per_second": len(score_samples) / score_seconds,
        "score_mean_nll": float(nll.mean()),
        "collate_samples_per_second": collate_sps,
    }


def cmd_run(args: argparse.Namespace) -> int:
    """Build the model and samples, train and score once per attention kernel, print and save the JSON lines."""
    if args.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import importlib.util

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --cpu-smoke for the CPU dry run)", file=sys.stderr)
        return 2
    shape = SMOKE_SHAPE if args.cpu_smoke else GPU_SHAPE
    device, dtype = ("cpu", torch.float32) if args.cpu_smoke else ("cuda", torch.bfloat16)
    attns = args.attn or (["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []))
    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    records = []
    try:
        samples = make_samples(args.samples, work / "images", shape.image_size)
        base = build_llava(work / "base", shape, corpus_of(samples), device=device, dtype=dtype)
        print(f"gpu_check: {len(samples)} samples, base model in {time.perf_counter() - started:.1f}s", flush=True)
        for attn in attns:
            if records and time.perf_counter() - started > args.budget_s:
                print(f"gpu_check: {attn} skipped, past the {args.budget_s:.0f}s budget", flush=True)
                continue
            record = train_and_score(base, samples, work, args, shape, attn)
            record["seconds_so_far"] = round(time.perf_counter() - started, 1)
            records.append(record)
            if os.environ.get("OUT"):  # rewritten after each run: a later run cut short leaves the earlier ones
                Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
                Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(records, indent=1) + "\n")
            print(json.dumps(record), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def cmd_pins(args: argparse.Namespace) -> int:
    """Print the NAME==VERSION pins, binary ones by default, those to build with --build."""
    for pin in parse_wheel_list(Path(args.list).read_text()):
        if pin.kind == ("build" if args.build else "binary"):
            print(f"{pin.name}=={pin.version}")
    return 0


def cmd_wheels(args: argparse.Namespace) -> int:
    """Check a wheel folder against the pins and the device image; print its size."""
    folder = Path(args.folder)
    problems, notes = check_wheel_dir(folder, parse_wheel_list(Path(args.list).read_text()))
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"{len(list(folder.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB; {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """On the device, after the install: every pin at its version and every requirement met; the versions used."""
    from importlib import metadata

    pins = parse_wheel_list(Path(args.list).read_text())
    problems = installed_problems(pins)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    versions = {}
    for name in ("torch", "transformers", "trl", "datasets", "deepspeed", "accelerate", "peft", "flash-attn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    print(json.dumps({"preflight_problems": len(problems), "versions": versions}), flush=True)
    return 1 if problems and args.strict else 0


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score, print JSON lines")
    run.add_argument("--cpu-smoke", action="store_true", help="tiny shape, fp32, no DeepSpeed, on the CPU")
    run.add_argument("--samples", type=int, default=None, help="training samples (768 on GPU, 24 in the smoke run)")
    run.add_argument("--batch-size", type=int, default=None, help="per-device batch (16 on GPU, 8 in the smoke run)")
    run.add_argument("--warmup-steps", type=int, default=None, help="steps left out of the steady rate (8 / 1)")
    run.add_argument("--score-samples", type=int, default=None, help="samples scored (256 / 16)")
    run.add_argument("--score-batch-size", type=int, default=None, help="scoring batch (32 / 8)")
    run.add_argument(
        "--attn",
        action="append",
        choices=["sdpa", "eager", "flash_attention_2"],
        help="attention kernel(s); default sdpa (+ flash_attention_2)",
    )
    run.add_argument(
        "--deepspeed", choices=["auto", "on", "off"], default="auto", help="ZeRO-2 from recipes/; auto: on CUDA only"
    )
    run.add_argument("--budget-s", type=float, default=300.0, help="start no further run after this many seconds")
    run.add_argument("--work", default=None, help="work folder (default: a new temp folder)")
    for name, helptext in (("pins", "print the pins"), ("wheels", "check a wheel folder"), ("preflight", "on device")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--list", default=str(WHEEL_LIST), help="the wheel list")
        if name == "pins":
            p.add_argument("--build", action="store_true", help="the pins to build from an sdist")
        if name == "wheels":
            p.add_argument("folder", help="the wheel folder")
        if name == "preflight":
            p.add_argument("--strict", action="store_true", help="exit 1 on a problem")
    args = parser.parse_args(argv)
    if args.command == "run":
        smoke = args.cpu_smoke
        for key, gpu, cpu in (
            ("samples", 768, 24),
            ("batch_size", 16, 8),
            ("warmup_steps", 8, 1),
            ("score_samples", 256, 16),
            ("score_batch_size", 32, 8),
        ):
            if getattr(args, key) is None:
                setattr(args, key, cpu if smoke else gpu)
        return cmd_run(args)
    return {"pins": cmd_pins, "wheels": cmd_wheels, "preflight": cmd_preflight}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

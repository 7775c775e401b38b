"""scripts/gpu_check: the peak-FLOPs table, the MFU arithmetic, the wheel list and its checks, and the CPU dry run.

Nothing here runs on a GPU: the GPU figures come only from scripts/gpu_check.sh on a lent machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc  # dataclasses look their module up by name
_spec.loader.exec_module(gc)


@pytest.mark.parametrize(
    ("name", "tflops", "label"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4, "H100 SXM"),
        ("NVIDIA H100 PCIe", 756.5, "H100 PCIe"),
        ("NVIDIA H100 NVL", 835.5, "H100 NVL"),
        ("NVIDIA H200", 989.4, "H200 SXM"),
        ("NVIDIA H200 NVL", 835.5, "H200 NVL"),
        ("NVIDIA GH200 480GB", 989.4, "GH200"),
        ("NVIDIA A100-SXM4-80GB", 312.0, "A100"),
    ],
)
def test_peak_lookup(name, tflops, label):
    assert gc.peak_bf16_flops(name) == (tflops * 1e12, label)


def test_peak_lookup_unknown_device():
    assert gc.peak_bf16_flops("NVIDIA GeForce RTX 4090") is None


def test_mfu_arithmetic():
    # 1e9 LM parameters at 1000 tokens/s: 6e12; a frozen 3e8 vision tower at 500 patches/s: 2 * 3e8 * 500 = 3e11
    assert gc.train_flops_per_second(10**9, 3 * 10**8, 1000.0, 500.0) == pytest.approx(6.3e12)
    assert gc.train_flops_per_second(10**9, 3 * 10**8, 1000.0, 500.0, vision_trained=True) == pytest.approx(6.9e12)
    assert gc.mfu(494.7e12, 989.4e12) == pytest.approx(0.5)
    assert gc.mfu(1e12, None) is None
    assert gc.mfu(1e12, 0.0) is None


def test_shapes():
    assert gc.GPU_SHAPE.image_tokens == 576  # CLIP-L/14 at 336 px, as LLaVA-1.5
    assert gc.GPU_SHAPE.patches == 577
    assert gc.SMOKE_SHAPE.image_tokens == 16


def test_gpu_shape_builds(tmp_path):
    """The GPU run's model from config, on the meta device (no memory): its size, and 576 image tokens per sample."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator

    samples = gc.make_samples(2, tmp_path, gc.GPU_SHAPE.image_size)
    processor = gc.build_processor(gc.GPU_SHAPE, gc.corpus_of(samples))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(gc.llava_config(gc.GPU_SHAPE, processor.tokenizer))
    n_total = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    assert 1.35e9 < n_total < 1.45e9 and 0.29e9 < n_vision < 0.31e9
    batch = VisionCollator(processor)([sample_to_row(s) for s in samples])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [576, 576]
    assert tuple(batch["pixel_values"].shape) == (2, 3, 336, 336)


def test_steady_rate():
    stamps = [(0, 0.0), (1, 5.0), (2, 6.0), (3, 7.0), (4, 8.0)]
    assert gc.steady_rate(stamps, warmup_steps=1) == (pytest.approx(1.0), 3)
    assert gc.steady_rate(stamps, warmup_steps=0) == (pytest.approx(0.5), 4)
    assert gc.steady_rate(stamps, warmup_steps=10) == (pytest.approx(1.0), 1)  # too few: the last step
    assert gc.steady_rate([(0, 0.0)], warmup_steps=0) == (0.0, 0)


def test_parse_wheel_list():
    text = """
    # a comment
    transformers==5.25.0   # why
    Pydantic_Core==2.50.5
    deepspeed==0.19.8 build
    kernels skip   # not needed
    """
    pins = gc.parse_wheel_list(text)
    assert pins == [
        gc.Pin("transformers", "5.25.0", "binary"),
        gc.Pin("pydantic-core", "2.50.5", "binary"),
        gc.Pin("deepspeed", "0.19.8", "build"),
        gc.Pin("kernels", None, "skip"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "transformers",  # no version
        "transformers>=5",  # not a pin
        "transformers==5.25.0 fast",  # unknown flag
        "kernels==0.19.1 skip",  # skip takes no version
        "pydantic-core==2.50.5\npydantic_core==2.50.4",  # twice, under two spellings
    ],
)
def test_parse_wheel_list_rejects(text):
    with pytest.raises(ValueError):
        gc.parse_wheel_list(text)


def test_repo_wheel_list_matches_pyproject():
    """Every pinned package that pyproject.toml names is pinned inside mixlab's range."""
    from packaging.requirements import Requirement

    pins = {p.name: p for p in gc.parse_wheel_list(gc.WHEEL_LIST.read_text())}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["deepspeed"]]
    checked = set()
    for req in reqs:
        pin = pins.get(gc.normalise(req.name))
        if pin is not None and pin.version:
            assert req.specifier.contains(pin.version), f"{pin.name}=={pin.version} is outside {req}"
            checked.add(pin.name)
    assert {"transformers", "trl", "datasets", "deepspeed", "accelerate", "peft", "pydantic"} <= checked
    assert pins["deepspeed"].kind == "build"


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")


def test_check_wheel_dir(tmp_path):
    pins = gc.parse_wheel_list("alpha==1.0\nbeta-pkg==2.0\nkernels skip\n")
    _fake_wheel(tmp_path, "alpha", "1.0", ["beta-pkg>=2", "numpy>=1", "regex>=2020", "kernels", "foo; extra == 'x'"])
    _fake_wheel(tmp_path, "beta-pkg", "2.0", ["torch>=2.0", "colorama; sys_platform == 'win32'"])
    device = frozenset({"numpy", "regex", "torch"})
    problems, notes = gc.check_wheel_dir(tmp_path, pins, device, {"numpy": "2.5.2", "torch": "2.11.0"})
    assert problems == []
    assert any("regex" in n and "not recorded" in n for n in notes)
    assert any("kernels" in n and "on purpose" in n for n in notes)


def test_check_wheel_dir_problems(tmp_path):
    pins = gc.parse_wheel_list("alpha==1.0\nbeta==2.0\ngamma==3.0\n")
    _fake_wheel(tmp_path, "alpha", "1.0", ["beta>=3", "missing-pkg", "numpy<2"])
    _fake_wheel(tmp_path, "beta", "2.0", [])
    _fake_wheel(tmp_path, "beta", "2.1", [])  # two versions of one name
    _fake_wheel(tmp_path, "stray", "0.1", [])  # not pinned; gamma is pinned but absent
    problems, _ = gc.check_wheel_dir(tmp_path, pins, frozenset({"numpy"}), {"numpy": "2.5.2"})
    text = "\n".join(problems)
    for expected in ("alpha needs beta>=3", "missing-pkg", "the device has numpy==2.5.2", "beta==2.0: found",
                     "gamma==3.0: found no wheel", "stray: a wheel that is not pinned"):  # fmt: skip
        assert expected in text, text


def test_installed_problems():
    have = metadata.version("pluggy")
    assert gc.installed_problems([gc.Pin("pluggy", have)]) == []
    assert "pinned" in gc.installed_problems([gc.Pin("pluggy", have + ".post999")])[0]
    assert "not installed" in gc.installed_problems([gc.Pin("surely-not-installed-pkg", "1.0")])[0]
    assert gc.installed_problems([gc.Pin("kernels", None, "skip")]) == []


KEYS = ("tokens_per_second", "tokens_per_second_steady", "model_tflops_per_second", "peak_tflops", "mfu",
        "peak_memory_gib", "score_samples_per_second", "collate_samples_per_second", "n_params", "n_params_vision",
        "steps", "tokens_per_step")  # fmt: skip


def test_cpu_smoke_run(tmp_path):
    """scripts/gpu_check.sh --cpu-smoke: the GPU run's Python on a tiny shape; one JSON line, positive figures."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["mode"] == "cpu-smoke" and record["dtype"] == "fp32" and record["deepspeed"] is None
    assert record["attn"] == "sdpa"
    for key in KEYS:
        assert record[key] > 0, key
    assert record["steps"] == 3 and record["samples"] == 24
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == [record]


def test_gpu_run_refuses_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "run", "--work", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_shell_script_syntax():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0

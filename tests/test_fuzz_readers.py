"""Issue 25: the artifact readers under fuzzed input (Hypothesis). Every example starts from a valid artifact — a
compressed folder, a Core ML bundle manifest, a safetensors file — mutates it (a manifest's keys, types, numbers,
unicode and nesting; a safetensors header's length, offsets, dtypes and shapes; a folder's files turned into
folders, links, FIFOs or paths out of it), then reads it through every typed accessor. The contract:

- the reader returns, or raises `BadInput` with one line — never another exception (a traceback for the user);
- nothing in the folder is created, deleted or changed;
- nothing outside the artifact is read: a path in a manifest cannot lead out of its folder (or into a FIFO, which
  would block), and a header that declares bytes past the end of its file is refused, not followed.

Runs: the "ci" profile (default) is derandomized — the same examples on every run — with enough examples per test
for ≥ 2,000 in all; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs many more with fresh randomness.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import signal
import struct
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pocketsd.errors import BadInput

PER_TEST = {"ci": 450, "fuzz": 20_000}
settings.register_profile("ci", max_examples=PER_TEST["ci"], derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=PER_TEST["fuzz"], deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
RAN: dict[str, int] = {}  # examples each property actually ran (checked at the end of the file)


# ---- outcome checks -----------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, str]:
    """{relative path: content digest | 'dir' | 'link→…' | 'fifo'}: what must be the same after a read."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link→{os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            elif not p.is_file():
                out[rel] = "fifo"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise Blocked("the reader blocked for 20 s (a FIFO opened, or a read that never ends)")


def _outcome(read, root: Path) -> str:
    """Run `read()`; 'ok' or 'bad' (a one-line BadInput). Any other exception fails the example, and so does a
    read that blocks (SIGALRM ends it instead of hanging the suite)."""
    before = _tree(root)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        read()
        result = "ok"
    except BadInput as exc:
        text = str(exc)
        assert text and "\n" not in text and "Traceback" not in text, repr(text)
        result = "bad"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert _tree(root) == before, "a reader changed the folder it read"
    event(f"read: {result}")  # shown by --hypothesis-show-statistics: both outcomes must occur
    return result


# ---- JSON values and manifest mutations ---------------------------------------------------------------------
HUGE = st.sampled_from([2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30, 2**1000])
FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5, 1e-320])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "../../outside", "/etc/hostname", "unet/../../x", "Resources/../../../etc", "\x00", "é" * 3, "💥",
     "unet/pocketsd_unet.safetensors", "Resources/Unet.mlpackage", "fifo", "compressed", "coreml"])
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | HUGE | FLOATS | TEXT
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
                    max_leaves=8)


def _paths(value, prefix=()):
    """Every (path of keys/indexes) inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated(draw, base: dict):
    """`base` with 1–4 mutations: a value replaced (any JSON, huge numbers, NaN, unicode, paths out of the folder),
    a key deleted, a value wrapped in a list or a dict, a key renamed, or the whole document replaced."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "wrap_list", "wrap_dict", "rename", "root"]))
        if op == "root":
            doc = draw(JSON)
            continue
        if not path:
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(JSON)
        elif op == "delete":
            del parent[key]
        elif op == "wrap_list":
            parent[key] = [parent[key]]
        elif op == "wrap_dict":
            parent[key] = {"value": parent[key]}
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(TEXT)] = parent.pop(key)
    return doc


def _dumps(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")  # NaN/Infinity tokens included: json.loads reads them


RAW_JSON = st.sampled_from([b"", b"{", b"[" * 100_000, b"{\"a\":" * 50_000, b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"null",
                            b"1e999999", b"{\"kind\": \"compressed\", \"kind\": 7}", b"\x00" * 64, b"[]", b"\"text\""])


# ---- valid bases --------------------------------------------------------------------------------------------
def _safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pocketsd-compressed-unet", "format_version": "2"})


def _unet_tensors():
    import torch

    return {"l.codes": torch.arange(4, dtype=torch.uint8), "l.lut": torch.zeros(1, 16, dtype=torch.float16),
            "l.lowrank_up": torch.ones(2, 1, dtype=torch.float16), "conv_in.weight": torch.ones(2, 2, dtype=torch.float16)}


def compressed_base(folder: Path) -> dict:
    """A small, valid compressed folder (manifest format 2 with every file's sha256); returns its manifest."""
    from pocketsd.artifacts.integrity import record_files

    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (folder / "unet" / "pocketsd_unet.safetensors").write_bytes(_safetensors(_unet_tensors()))
    layer = {"name": "l", "kind": "linear", "shape": [2, 4], "quantizer": "palette", "bits": 4, "group_size": 2,
             "rank": 1, "alpha": 1.0, "smoothed": False, "has_bias": False, "snr_db": 30.5, "bytes": 40}
    manifest = {"kind": "compressed", "format_version": 2, "pocketsd_version": "0.3.0", "created_utc": "2026-01-01T00:00:00Z",
                "source_model": {"spec": "reference", "path": "/nowhere"}, "recipe": {"name": "w4r1"},
                "components": {"unet": {"weights": "unet/pocketsd_unet.safetensors", "config": "unet/config.json",
                                        "library": "diffusers", "class_name": "UNet2DConditionModel", "layers": [layer],
                                        "fp16_layers": ["conv_in"], "accounting": {"total_bytes": 100, "params": 12},
                                        "recipe": {"name": "w4r1"}, "calibration": {}}},
                "loras": [{"file": "a.safetensors", "scale": 1.0}], "timings_s": {"compress": 1.0}}
    manifest["files"] = record_files(folder, ["model_index.json", "unet/config.json", "unet/pocketsd_unet.safetensors"])
    return manifest


def bundle_base(folder: Path) -> dict:
    """A small, valid Core ML bundle manifest (format 2) whose one package is a folder with a recorded digest."""
    from pocketsd.artifacts.bundle import memory_plan
    from pocketsd.artifacts.integrity import tree_sha256

    pkg = folder / "Resources" / "TextEncoder.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "weight.bin").write_bytes(bytes(range(64)))
    comp = {"file": "Resources/TextEncoder.mlpackage", "stage": "text_encode",
            "inputs": [{"name": "input_ids", "shape": [1, 77], "dtype": "float32"}],
            "outputs": [{"name": "hidden_embeds", "shape": [1, 77, 32], "dtype": "float32"}],
            "weight_bytes": 64, "bytes": 80, "compute_precision": "float16",
            "sha256": {"Resources/TextEncoder.mlpackage": tree_sha256(pkg)}, "functions": ["main"]}
    manifest = {"kind": "coreml", "format_version": 2, "pocketsd_version": "0.3.0", "source_model": {"spec": "x"},
                "model_type": "sdxl", "image_size": [64, 64], "latent_size": [8, 8], "vae_scaling_factor": 0.13025,
                "vae_shift_factor": None, "scheduler_config": {"_class_name": "EulerDiscreteScheduler"},
                "force_zeros_for_empty_prompt": True, "tokenizers": [{"pad_token": "!", "model_max_length": 77}],
                "options": {}, "components": {"TextEncoder": comp}}
    manifest["memory_plan"] = memory_plan(manifest["components"])
    return manifest


# ---- reading everything a reader offers ---------------------------------------------------------------------
def read_compressed_all(folder: Path) -> None:
    from pocketsd.artifacts.compressed import read_compressed_model

    model = read_compressed_model(folder)
    _ = (model.source, model.loras, model.recipe, model.files)
    for name, record in model.components.items():
        _ = [(layer.numel, layer.to_dict()) for layer in record.layers]
        model.config(name)
        model.state_dict(name)  # verifies the digests of the component's files first
    model.verify()


def read_bundle_all(folder: Path) -> None:
    from pocketsd.artifacts.bundle import STAGE_ORDER, read_bundle_manifest

    bundle = read_bundle_manifest(folder)
    _ = (bundle.family, bundle.resources, bundle.unet_packages(), bundle.controlnets(), bundle.unet_functions())
    for stage in STAGE_ORDER:
        bundle.packages_for(stage)
    for name in bundle.components:
        bundle.specs(name)
    bundle.verify()


# ---- the properties -----------------------------------------------------------------------------------------
def _count(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-bases")
    return {"compressed": compressed_base(root / "c"), "coreml": bundle_base(root / "b")}


def _fresh(kind: str, builder, tmp: Path) -> tuple[Path, dict]:
    """A new valid artifact for one example (each example damages its own copy); its manifest is not written yet."""
    folder = tmp / kind
    return folder, builder(folder)


@given(data=st.data())
def test_compressed_manifest_mutations(bases, data):
    _count("compressed_manifest")
    doc = data.draw(mutated(bases["compressed"]) | RAW_JSON, label="manifest")
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = _fresh("c", compressed_base, Path(tmp))
        (folder / "pocketsd.json").write_bytes(doc if isinstance(doc, bytes) else _dumps(doc))
        _outcome(lambda: read_compressed_all(folder), Path(tmp))


@given(data=st.data())
def test_bundle_manifest_mutations(bases, data):
    _count("bundle_manifest")
    doc = data.draw(mutated(bases["coreml"]) | RAW_JSON, label="manifest")
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = _fresh("b", bundle_base, Path(tmp))
        (folder / "pocketsd.json").write_bytes(doc if isinstance(doc, bytes) else _dumps(doc))
        _outcome(lambda: read_bundle_all(folder), Path(tmp))


# safetensors: the 8-byte little-endian header length, the JSON header {name: {dtype, shape, data_offsets}}, data.
DTYPES = st.sampled_from(["F16", "F32", "U8", "I64", "BOOL", "BF16", "F8_E4M3", "F4", "X9", "", "f16", 7])
DIMS = st.lists(st.integers(0, 5) | HUGE | st.sampled_from([-1, 2**32]), max_size=4)
OFFSETS = st.lists(st.integers(0, 80) | HUGE | st.sampled_from([-1, 2**40]), min_size=0, max_size=3)


@st.composite
def safetensors_file(draw):
    """A safetensors file made wrong in its length prefix, header JSON, a tensor's dtype/shape/offsets, or its size."""
    raw = _safetensors(_unet_tensors())
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    kind = draw(st.sampled_from(["length", "entry", "entry", "entry", "header", "truncate", "extend"]))
    if kind == "length":
        return struct.pack("<Q", draw(st.integers(0, 2 * n) | HUGE.filter(lambda x: 0 <= x < 2**64))) + raw[8:]
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "extend":
        return raw + draw(st.binary(min_size=1, max_size=64))
    if kind == "header":
        header = draw(mutated(header))
    else:
        key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "all"]))
        entry = header[key]
        if field in ("dtype", "all"):
            entry["dtype"] = draw(DTYPES)
        if field in ("shape", "all"):
            entry["shape"] = draw(DIMS)
        if field in ("data_offsets", "all"):
            entry["data_offsets"] = draw(OFFSETS)
    body = json.dumps(header).encode()
    pad = draw(st.sampled_from([b"", b" " * ((8 - len(body) % 8) % 8)]))  # the format's 8-byte alignment, or not
    return struct.pack("<Q", len(body + pad)) + body + pad + data


def _past_end(blob: bytes) -> bool:
    """Does a well-formed header declare a tensor beyond the file's data? (then reading it must be refused)"""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        size = len(blob) - 8 - n
        return any(isinstance(v, dict) and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2
                   and all(isinstance(o, int) for o in v["data_offsets"]) and v["data_offsets"][1] > size
                   for k, v in header.items() if k != "__metadata__")
    except Exception:
        return False


@given(blob=safetensors_file())
def test_compressed_weights_header_mutations(bases, blob):
    """The weights a compressed folder lists, damaged *and* re-recorded in the manifest (so the sha256 check passes
    and the safetensors header itself is what the reader meets)."""
    _count("compressed_safetensors")
    from pocketsd.artifacts.integrity import record_files

    with tempfile.TemporaryDirectory() as tmp:
        folder, manifest = _fresh("c", compressed_base, Path(tmp))
        (folder / "unet" / "pocketsd_unet.safetensors").write_bytes(blob)
        manifest["files"] = record_files(folder, ["model_index.json", "unet/config.json", "unet/pocketsd_unet.safetensors"])
        (folder / "pocketsd.json").write_text(json.dumps(manifest))
        result = _outcome(lambda: read_compressed_all(folder), Path(tmp))
        if _past_end(blob):
            assert result == "bad", "a header declaring bytes past the end of the file was followed"


@given(blob=safetensors_file())
def test_model_folder_header_mutations(blob):
    """`info` and every stage's precheck read a diffusers folder's safetensors headers (model_folder)."""
    _count("model_folder_safetensors")
    from pocketsd.artifacts.model_folder import check_weight_files, safetensors_stats

    with tempfile.TemporaryDirectory() as tmp:
        unet = Path(tmp) / "unet"
        unet.mkdir()
        (unet / "diffusion_pytorch_model.safetensors").write_bytes(blob)
        result = _outcome(lambda: (safetensors_stats(unet), check_weight_files(Path(tmp), ["unet"])), Path(tmp))
        if _past_end(blob):
            assert result == "bad", "a header declaring bytes past the end of the file was accepted"


FOLDER_DAMAGE = ["delete", "dir", "link_out", "link_loop", "fifo", "empty", "listed_out", "listed_abs", "listed_fifo"]


@given(kind=st.sampled_from(["c", "b"]), damage=st.sampled_from(FOLDER_DAMAGE), which=st.integers(0, 20))
def test_folder_mutations(kind, damage, which):
    """A folder's files replaced by folders, links out of it or to themselves, FIFOs (whose reading blocks), empty
    files; and manifests listing paths out of the folder or to a FIFO."""
    _count("folders")
    with tempfile.TemporaryDirectory() as tmp:
        folder, manifest = _fresh(kind, compressed_base if kind == "c" else bundle_base, Path(tmp))
        (folder / "pocketsd.json").write_text(json.dumps(manifest))
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        target = files[which % len(files)]
        outside = Path(tmp) / "outside.bin"
        outside.write_bytes(b"x" * 10)
        if damage == "delete":
            target.unlink()
        elif damage == "dir":
            target.unlink()
            target.mkdir()
        elif damage == "link_out":
            target.unlink()
            target.symlink_to(outside)
        elif damage == "link_loop":
            target.unlink()
            target.symlink_to(target)
        elif damage == "fifo":
            target.unlink()
            os.mkfifo(target)
        elif damage == "empty":
            target.write_bytes(b"")
        else:
            path = {"listed_out": "../outside.bin", "listed_abs": str(outside), "listed_fifo": "unet/pipe"}[damage]
            if damage == "listed_fifo":
                (folder / "unet").mkdir(exist_ok=True)
                os.mkfifo(folder / "unet" / "pipe")
            if kind == "c":
                manifest["files"][path] = "0" * 64
                if which % 2:
                    manifest["components"]["unet"]["weights"] = path
            else:
                manifest["components"]["TextEncoder"]["sha256"][path] = "0" * 64
        if damage.startswith("listed"):
            (folder / "pocketsd.json").write_text(json.dumps(manifest))
        read = read_compressed_all if kind == "c" else read_bundle_all
        result = _outcome(lambda: read(folder), Path(tmp))
        assert result == "bad", f"{damage} of {target.relative_to(folder)} was not noticed"


def test_examples_ran():
    """Each property ran its share (Hypothesis stops early only when a strategy has fewer distinct examples)."""
    expected = {"compressed_manifest", "bundle_manifest", "compressed_safetensors", "model_folder_safetensors", "folders"}
    if set(RAN) != expected:
        pytest.skip("run with the whole file to check the example counts")
    total = sum(RAN.values())
    print(f"fuzz examples ({PROFILE}): {RAN} = {total}", file=sys.stderr)
    assert total >= 2000 if PROFILE == "ci" else total >= 5 * 2000

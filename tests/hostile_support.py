"""Shared by the hostile-input and kill suites: a workspace of bad and good inputs built once, and a snapshot that
hashes every file around a case so "nothing created, deleted or changed" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from bundle_fixture import bundle_v1

PROMPT = "a red circle on a white background"


# ---- snapshots ----------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def _sha(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime, ctime, inode): ctime moves on every write, so an unchanged
    key means unchanged bytes and the file is not read again for every case."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def snapshot(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """{path: sha256 | 'dir' | 'link→target'} for everything under `roots`, except `skip` and what lies inside it."""
    skip = tuple(Path(os.path.abspath(s)) for s in skip)
    out: dict[str, str] = {}
    for root in roots:
        root = Path(os.path.abspath(root))
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not any((here / d) == s for s in skip)]
            for name in dirnames:
                p = here / name
                out[str(p)] = f"link→{os.readlink(p)}" if p.is_symlink() else "dir"
            for name in filenames:
                p = here / name
                if any(p == s for s in skip):
                    continue
                out[str(p)] = f"link→{os.readlink(p)}" if p.is_symlink() else _sha(p)
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    created = sorted(set(after) - set(before))
    deleted = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [f"created {p}" for p in created] + [f"deleted {p}" for p in deleted] + [f"changed {p}" for p in changed]


# ---- inputs -------------------------------------------------------------------------------------------
def _png(path: Path, size=(64, 64), color=(200, 30, 30), mode="RGB") -> Path:
    from PIL import Image

    Image.new(mode, size, color).save(path)
    return path


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_code_byte(path: Path) -> None:
    """Flip one byte inside a compressed layer's packed codes (any value is a valid code: the damage is silent
    unless the digest is checked)."""
    import struct

    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = next(k for k in sorted(header) if k.endswith(".codes"))
    start = 8 + n + header[key]["data_offsets"][0]
    raw[start] ^= 0xFF
    path.write_bytes(bytes(raw))


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A few hundred bytes of PNG whose header declares width×height pixels (a decompression bomb as a reader meets
    it: the size is all it can know before inflating)."""
    import struct
    import zlib

    _png(path, (8, 8), 0, mode="L")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC covers type and data
    path.write_bytes(bytes(data))
    return path


def train_sets(root: Path) -> dict[str, Path]:
    """Image folders for `lora train`: one good set and one per way a set can be wrong."""
    from PIL import Image

    def folder(name: str, images: dict[str, Image.Image | bytes], captions: bool | dict = True) -> Path:
        d = root / name
        d.mkdir(parents=True)
        for file, im in images.items():
            if isinstance(im, bytes):
                (d / file).write_bytes(im)
            else:
                im.save(d / file)
            if captions is True:
                (d / file).with_suffix(".txt").write_text(f"a picture called {Path(file).stem}")
            elif isinstance(captions, dict) and file in captions:
                (d / file).with_suffix(".txt").write_bytes(captions[file])
        return d

    red, blue = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))
    png = (root / "_one.png")
    root.mkdir(parents=True, exist_ok=True)
    red.save(png)
    good = png.read_bytes()
    png.unlink()
    out = {
        "train_ok": folder("train_ok", {"0.png": red, "1.png": blue}),
        "train_no_captions": folder("train_no_captions", {"0.png": red, "1.png": blue}, captions=False),
        "train_latin1_caption": folder("train_latin1_caption", {"0.png": red},
                                       captions={"0.png": "caf\xe9 au lait".encode("latin-1")}),
        "train_blank_caption": folder("train_blank_caption", {"0.png": red}, captions={"0.png": b"  \n\t \n"}),
        "train_mixed": folder("train_mixed", {
            "rgba.png": Image.new("RGBA", (200, 100), (255, 0, 0, 128)), "gray.png": Image.new("L", (64, 96), 90),
            "pal.png": Image.new("P", (80, 80), 3), "cmyk.jpg": Image.new("CMYK", (96, 64), (0, 255, 0, 0)),
            "deep.png": Image.new("I;16", (70, 70), 40000), "bits.png": Image.new("1", (64, 64), 1),
            "tiny.png": Image.new("RGB", (4, 4))}),
        "train_zero_byte": folder("train_zero_byte", {"0.png": red, "empty.png": b""}),
        "train_truncated": folder("train_truncated", {"0.png": red, "cut.png": good[: len(good) // 2]}),
        "train_text_as_png": folder("train_text_as_png", {"0.png": red, "notes.png": b"shopping list"}),
    }
    for name, (w, h) in {"train_bomb": (12_500, 12_000), "train_bomb_huge": (50_000, 50_000)}.items():
        d = folder(name, {"0.png": red})
        bomb_png(d / "bomb.png", w, h)
        (d / "bomb.txt").write_text("a very large picture")
        out[name] = d
    return out


def many_images(folder: Path, n: int) -> Path:
    """`n` copies of one 8×8 PNG (captioned): a folder a user might point at by mistake (a whole photo library)."""
    from PIL import Image

    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "00000.png")
    data = (folder / "00000.png").read_bytes()
    for i in range(1, n):
        (folder / f"{i:05d}.png").write_bytes(data)
    return folder


def lora_for(unet_dir: Path, out: Path, rank: int = 2, wrong_in: bool = False) -> Path:
    """A PEFT-format LoRA (`unet.<module>.lora_A/B.weight`) on a UNet's attention projections, read from its
    weights' shapes; `wrong_in` makes one down matrix one column short (a LoRA for another model)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(Path(unet_dir).glob("*.safetensors"))
    tensors = {}
    g = torch.Generator().manual_seed(0)
    with safe_open(str(files[0]), framework="pt") as fh:
        keys = [k for k in fh.keys() if k.endswith((".to_q.weight", ".to_v.weight"))][:4]
        for i, key in enumerate(keys):
            out_f, in_f = fh.get_slice(key).get_shape()[:2]
            module = key[: -len(".weight")]
            cols = in_f - 1 if (wrong_in and i == 0) else in_f
            tensors[f"unet.{module}.lora_A.weight"] = torch.randn(rank, cols, generator=g) * 0.01
            tensors[f"unet.{module}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.01
    save_file(tensors, str(out))
    return out


@dataclass
class Workspace:
    root: Path
    ref: Path  # the shipped reference model (read only)
    ref_loras: Path
    tiny: Path  # reference model with a one-level UNet (fast to compress and convert)
    comp: Path  # a compressed folder of `tiny`
    comp_flipped: Path  # the same with one byte of its UNet weights flipped
    bundle_flipped: Path  # a Core ML bundle (format 1 fixture) with one byte of weight.bin flipped
    trunc: Path  # reference model whose UNet safetensors lost its second half
    nan_model: Path  # reference model whose UNet conv_out bias is NaN
    sd3: Path
    not_pipeline: Path
    files: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.files[name]


def build_workspace(root: Path, ref: Path) -> Workspace:
    """Every input the suites need, made once (≈ 20 s): models, LoRAs, images, user folders."""
    import sys

    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(Path(__file__).parent))
    from convert_support import compress_quickly, tiny_unet_pipeline

    from pocketsd.data import REFERENCE_LORAS

    root.mkdir(parents=True, exist_ok=True)
    tiny = tiny_unet_pipeline(ref, root / "tiny")
    comp = compress_quickly(tiny, root / "comp", rank=2)
    comp_flipped = root / "comp_flipped"
    shutil.copytree(comp, comp_flipped)
    _flip_code_byte(comp_flipped / "unet" / "pocketsd_unet.safetensors")

    bundle_flipped = root / "bundle_flipped"
    bundle_v1(bundle_flipped)
    _flip_byte(next(bundle_flipped.rglob("weight.bin")))

    trunc = root / "trunc"
    shutil.copytree(ref, trunc, ignore=shutil.ignore_patterns("controlnet"))
    unet_file = next((trunc / "unet").glob("*.safetensors"))
    with open(unet_file, "r+b") as fh:
        fh.truncate(unet_file.stat().st_size // 2)

    nan_model = root / "nan_model"
    shutil.copytree(ref, nan_model, ignore=shutil.ignore_patterns("controlnet"))
    unet_file = next((nan_model / "unet").glob("*.safetensors"))
    state = load_file(str(unet_file))
    state["conv_out.bias"] = torch.full_like(state["conv_out.bias"], float("nan"))
    save_file(state, str(unet_file))

    sd3 = root / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    not_pipeline = root / "not_pipeline"
    not_pipeline.mkdir()
    (not_pipeline / "notes.txt").write_text("shopping list")

    f: dict[str, Path] = {}
    f["blueprint"] = Path(REFERENCE_LORAS) / "blueprint.safetensors"
    f["tiny_lora"] = lora_for(tiny / "unet", root / "tiny_lora.safetensors")
    f["wrong_lora"] = lora_for(ref / "unet", root / "wrong_lora.safetensors", wrong_in=True)
    f["garbage_lora"] = root / "garbage.safetensors"
    f["garbage_lora"].write_bytes(os.urandom(3000))
    f["pickle_lora"] = root / "lora.bin"
    torch.save({"x": torch.zeros(1)}, f["pickle_lora"])
    f["notes"] = root / "notes.txt"
    f["notes"].write_text("not a model")
    f["ckpt"] = root / "model.ckpt"
    torch.save({"state_dict": {}}, f["ckpt"])
    f["broken_ckpt"] = root / "broken.ckpt"
    f["broken_ckpt"].write_bytes(b"PK\x03\x04" + os.urandom(500))
    f["image"] = _png(root / "photo.png", (128, 128))
    f["mask"] = _png(root / "mask.png", (128, 128), 255, mode="L")
    f["one_px"] = _png(root / "one_px.png", (1, 1))
    f["broken_png"] = root / "broken.png"
    f["broken_png"].write_bytes(f["image"].read_bytes()[:60])
    f["not_image"] = root / "not_image.png"
    f["not_image"].write_text("hello")
    f["image_dir"] = root / "images"
    f["image_dir"].mkdir()
    f["user_png"] = _png(root / "user_photo.png", (32, 32), (1, 2, 3))  # a PNG PocketSD did not write
    f["user_json"] = root / "notes.json"
    f["user_json"].write_text(json.dumps({"mine": True}))
    f["user_dir"] = root / "some" / "dir"
    f["user_dir"].mkdir(parents=True)
    (f["user_dir"] / "important.txt").write_text("do not lose me")
    f["photos"] = root / "photos"
    f["photos"].mkdir()
    (f["photos"] / "IMG_0001.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(1000))
    f["text_file"] = root / "a-text-file"
    f["text_file"].write_text("keep me")
    f["empty_dir"] = root / "empty"
    f["empty_dir"].mkdir()
    f["prompts"] = root / "prompts.txt"
    f["prompts"].write_text("a red circle on a white background\n")
    f["empty_prompts"] = root / "empty_prompts.txt"
    f["empty_prompts"].write_text("\n\n")
    f["blank_prompts"] = root / "blank_prompts.txt"
    f["blank_prompts"].write_text("   \n\t\n# a comment, not a prompt\n\n")
    f["huge_prompts"] = root / "huge_prompts.txt"
    f["huge_prompts"].write_text("a red circle\n" + "a very long prompt " * 3000 + "\n")
    f["dup_prompts"] = root / "dup_prompts.txt"
    f["dup_prompts"].write_text("a red circle\n\na blue square\n  a red circle  \n")
    f["latin1_prompts"] = root / "latin1_prompts.txt"
    f["latin1_prompts"].write_bytes("a caf\xe9 on a white background\n".encode("latin-1"))
    f["two_prompts"] = root / "two_prompts.txt"
    f["two_prompts"].write_text("a red circle on a white background\na blue square on a black background\n")
    f["latin1_captions"] = root / "captions.tsv"
    f["latin1_captions"].write_bytes("0.png\tcaf\xe9\n1.png\tth\xe9\n".encode("latin-1"))
    f["captions_list"] = root / "captions.json"
    f["captions_list"].write_text(json.dumps(["0.png", "a red square"]))
    f["captions_nested"] = root / "captions_nested.json"
    f["captions_nested"].write_text(json.dumps({"0.png": {"text": "a red square"}, "1.png": "a blue square"}))
    f["captions_jsonl"] = root / "captions.jsonl"
    f["captions_jsonl"].write_text(json.dumps({"file": "0.png", "words": "a red square"}) + "\n")
    f["captions_no_tab"] = root / "captions.txt"
    f["captions_no_tab"].write_text("0.png a red square\n")
    f["eval_json"] = root / "eval_run" / "eval.json"
    f["eval_json"].parent.mkdir()
    f["eval_json"].write_text(json.dumps({"my": "own results"}))
    f.update(train_sets(root / "train"))
    return Workspace(root, ref, Path(REFERENCE_LORAS), tiny, comp, comp_flipped, bundle_flipped, trunc, nan_model,
                     sd3, not_pipeline, f)


def read_only_folder(base: Path) -> Path:
    """A folder this process cannot write: a chmod 555 folder, or for root (whom permissions do not stop) sysfs."""
    if os.geteuid() != 0:
        folder = base / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder
    return Path("/sys/kernel")


# ---- kill tests: a forkserver child runs the CLI and SIGKILLs itself at a kill point ----------------------------
def cli_child(argv: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    """Runs in a process forked from a server that already imported torch/diffusers/coremltools (seconds saved per
    kill); its output goes to `log`. `pocketsd.artifacts.atomic.kill_point` reads POCKETSD_KILL_AT."""
    import sys

    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import faulthandler

    faulthandler.dump_traceback_later(240, repeat=True, file=sys.stderr)  # a stuck run leaves its stacks in the log
    from pocketsd.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

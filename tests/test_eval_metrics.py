"""The metric layer on networks of the right architecture with random weights (CI has no published weights):
every code path runs, the maths is checked against values known by construction, and every such result says
real_weights=false. Skips for missing weights are one line naming the file and the download."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pocketsd.data.grammar import Scene
from pocketsd.eval import fid as fid_mod
from pocketsd.eval.fid import FidInceptionV3, FidScorer, fid_from_features
from pocketsd.eval.lpips import AlexNetFeatures, LpipsScorer
from pocketsd.eval.metrics import as_float_images, psnr_per_image, ssim_per_image
from pocketsd.eval.results import MetricResult
from pocketsd.eval.scoring import load_scorers, score_images
from pocketsd.eval.stats import T_INTERVAL, bootstrap_interval, mean_interval, proportion_interval
from pocketsd.eval.weights import WeightsMissing
from pocketsd.refmodel.drawing import draw_scene

SCENES = [Scene("red", "circle", "white"), Scene("blue", "square", "black"), Scene("green", "triangle", "gray"),
          Scene("yellow", "square", "white", "on the left"), Scene("purple", "circle", "gray", "at the top"),
          Scene("orange", "triangle", "black", "on the right")]


@pytest.fixture(scope="module")
def scenes_images():
    return [draw_scene(s, random.Random(i), size=64) for i, s in enumerate(SCENES)]


def _noisy(images, sigma=0.02, seed=0):
    x = as_float_images(images)
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub and HF cache, no weight variables: what a fresh machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("POCKETSD_LPIPS_ALEXNET", "POCKETSD_FID_INCEPTION", "POCKETSD_CLIP_MODEL", "POCKETSD_IMAGEREWARD",
                "POCKETSD_IMAGEREWARD_TOKENIZER"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# --- PSNR / SSIM ---------------------------------------------------------------------------------------------


def test_psnr_known_by_construction():
    ref = torch.full((2, 3, 16, 16), 0.5)
    d = 0.05
    sign = torch.ones(16, 16)
    sign[::2, 1::2] = -1
    sign[1::2, ::2] = -1
    test = ref + d * sign  # |error| = d everywhere, no clipping: MSE = d², PSNR = 20·log10(1/d)
    assert psnr_per_image(ref, test) == pytest.approx([20 * math.log10(1 / d)] * 2, abs=1e-3)
    assert psnr_per_image(ref, ref) == [math.inf, math.inf]
    assert ssim_per_image(ref, ref) == pytest.approx([1.0, 1.0])


# --- LPIPS ---------------------------------------------------------------------------------------------------


def test_lpips_equals_torchmetrics_lpips_on_the_same_backbone(monkeypatch, scenes_images):
    from torchmetrics.functional.image import lpips as tm

    scorer = LpipsScorer.random(seed=3)
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda net, pretrained=False: scorer.model.net.features)
    reference = tm._LPIPS(pretrained=True, net="alex").eval()
    a, b = as_float_images(scenes_images), _noisy(scenes_images)
    expected = reference(a, b, normalize=True).flatten()
    assert torch.allclose(torch.tensor(scorer.distances(a, b)), expected, rtol=1e-5, atol=1e-7)


def test_lpips_zero_for_identical_and_lower_for_matched_than_shuffled_pairs(scenes_images):
    scorer = LpipsScorer.random()
    same = scorer.score(scenes_images, scenes_images)
    assert same.per_item == [0.0] * len(SCENES) and same.value == 0.0
    noisy = _noisy(scenes_images)
    matched = scorer.distances(scenes_images, noisy)
    shuffled = scorer.distances(scenes_images, torch.roll(noisy, 1, dims=0))
    assert all(m < s for m, s in zip(matched, shuffled)), (matched, shuffled)
    result = scorer.score(scenes_images, noisy)
    assert result.real_weights is False and "random" in result.weights and result.interval_method == T_INTERVAL
    assert "not a quality measure" in result.line()


def test_lpips_weights_from_a_torchvision_checkpoint(tmp_path, monkeypatch, scenes_images):
    torch.manual_seed(1)
    backbone = AlexNetFeatures()
    state = {f"features.{k.split('.', 1)[1]}": v for k, v in backbone.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)  # the checkpoint also holds the classifier
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    monkeypatch.setenv("POCKETSD_LPIPS_ALEXNET", str(path))
    scorer = LpipsScorer.load()
    assert scorer.real_weights is True and scorer.weights == str(path)
    assert all(torch.equal(a, b) for a, b in zip(scorer.model.net.state_dict().values(), backbone.state_dict().values()))
    assert "not torchvision's published AlexNet" in scorer.score(scenes_images[:2], scenes_images[:2]).notes[0]
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)  # another network's layer
    torch.save(state, path)
    with pytest.raises(WeightsMissing, match=r"not torchvision's AlexNet checkpoint \(features.3.weight"):
        LpipsScorer.load()


def test_lpips_missing_or_wrong_weights_skip_in_one_line(no_weights):
    with pytest.raises(WeightsMissing) as err:
        LpipsScorer.load()
    message = str(err.value)
    assert message.startswith("skipped lpips: AlexNet weights not found at ")
    assert "alexnet-owt-7be5be79.pth" in message and "curl -L" in message and "\n" not in message
    hub = no_weights / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsMissing, match=r"has sha256 .*published file starts with 7be5be79"):
        LpipsScorer.load()


# --- FID -----------------------------------------------------------------------------------------------------


def test_fid_maths_known_by_construction():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 6, generator=g, dtype=torch.float64) + 0.3
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.1, 0.0], dtype=torch.float64)
    # Same covariance, means apart by `shift`: FID = |shift|².
    assert fid_from_features(real, real + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # fake = 2·real: Σ_f = 4Σ, √(ΣΣ_f) = 2Σ, so FID = |μ|² + tr Σ + 4 tr Σ − 4 tr Σ = |μ|² + tr Σ.
    mu = real.mean(0)
    cov = torch.cov(real.T)
    assert fid_from_features(real, 2 * real) == pytest.approx(float(mu @ mu + torch.trace(cov)), rel=1e-6)
    assert abs(fid_from_features(real, real)) < 1e-9


def test_exact_frechet_distance_equals_torchmetrics_fid():
    g = torch.Generator().manual_seed(1)
    for n_real, n_fake, dim in ((40, 30, 6), (10, 12, 50), (12, 12, 300)):  # more samples than features, fewer
        real = torch.randn(n_real, dim, generator=g, dtype=torch.float64)
        fake = 1.3 * torch.randn(n_fake, dim, generator=g, dtype=torch.float64) + 0.2
        assert fid_mod.frechet_distance(real, fake) == pytest.approx(fid_from_features(real, fake), rel=1e-6)


def test_fid_inception_architecture_and_features(scenes_images):
    keys = FidInceptionV3().state_dict()
    # The names and shapes of pytorch-fid's / torch-fidelity's weight file.
    assert keys["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert keys["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert keys["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert keys["fc.weight"].shape == (1008, 2048)
    scorer = FidScorer.random()
    images = scenes_images[:4]
    feats = scorer.features(images)
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all() and feats.std() > 0
    other = fid_mod.frechet_distance(feats, scorer.features(_noisy(images, sigma=0.3)))
    assert abs(fid_mod.frechet_distance(feats, feats)) < 1e-9 * other and other > 0


def test_fid_score_on_features_with_bootstrap():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(30, 8, generator=g, dtype=torch.float64)
    scorer = FidScorer(FidInceptionV3(), False, "random Inception-v3 (test)", None)
    same = scorer.score_features(real, real)
    assert abs(same.value) < 1e-9 and same.real_weights is False and "not a quality measure" in same.line()
    boot = scorer.score_features(real, real * 1.5 + 0.1, bootstrap=20, seed=0)
    assert boot.low <= boot.value <= boot.high or boot.low <= boot.high  # FID is biased; the interval is ordered
    assert boot.interval_method == "percentile bootstrap over images, 20 resamples"
    assert scorer.score_features(real[:1], real).skipped.startswith("skipped fid: needs at least 2 images")


def test_fid_loads_a_weight_file_key_for_key(tmp_path, monkeypatch):
    source = FidScorer.random(seed=5).model
    path = tmp_path / "inception.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setenv("POCKETSD_FID_INCEPTION", str(path))
    loaded = FidScorer.load()
    assert loaded.weights == str(path) and "does not start with 6726825d" in loaded.notes[0] and loaded.model.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), source.state_dict().values()))


def test_fid_missing_weights_skip_in_one_line(no_weights):
    result = load_scorers(["fid"])["fid"]
    assert isinstance(result, MetricResult) and not result.ok
    assert result.skipped.startswith("skipped fid: FID Inception weights not found at ")
    assert "pt_inception-2015-12-05-6726825d.pth" in result.skipped and "curl -L" in result.skipped


# --- CLIP score ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from pocketsd.data import REFERENCE_MODEL

    tok = AutoTokenizer.from_pretrained(REFERENCE_MODEL / "tokenizer")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                    crop_size={"height": 32, "width": 32}),
                              tokenizer=tok)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_known_by_construction(tiny_clip_dir, scenes_images):
    from pocketsd.eval.clip_score import ClipScorer

    scorer = ClipScorer.load(tiny_clip_dir, real_weights=False)
    clip = scorer.model.model
    texts = [s.caption for s in SCENES]
    with torch.no_grad():
        # Both towers' last layer norms output a constant vector and share a projection: every image and every
        # text embed to directions set here, so the score is known whatever the images and texts are.
        b_img, b_txt = torch.randn(32), torch.randn(32)
        clip.text_projection.weight.copy_(clip.visual_projection.weight)
        for ln, b in ((clip.vision_model.post_layernorm, b_img), (clip.text_model.final_layer_norm, b_txt)):
            ln.weight.zero_()
            ln.bias.copy_(b)
        proj = clip.visual_projection.weight
        cos = torch.nn.functional.cosine_similarity(proj @ b_img, proj @ b_txt, dim=0).item()
        result = scorer.score(scenes_images, texts)
        assert result.per_item == pytest.approx([max(100 * cos, 0.0)] * len(SCENES), abs=1e-3)
        clip.text_model.final_layer_norm.bias.copy_(b_img)
        assert scorer.scores(scenes_images[:2], texts[:2]) == pytest.approx([100.0, 100.0], abs=1e-3)
        clip.text_model.final_layer_norm.bias.copy_(-b_img)
        assert scorer.scores(scenes_images[:2], texts[:2]) == [0.0, 0.0]  # floored at 0, as torchmetrics does
    assert result.real_weights is False and result.higher_is_better


def test_clip_missing_weights_skip_in_one_line(no_weights, tmp_path):
    from pocketsd.eval.clip_score import ClipScorer

    with pytest.raises(WeightsMissing) as err:
        ClipScorer.load()
    message = str(err.value)
    assert message.startswith("skipped clip_score: CLIP weights not found for openai/clip-vit-large-patch14 in the "
                              "Hugging Face cache")
    assert "hf download openai/clip-vit-large-patch14" in message and "\n" not in message
    with pytest.raises(WeightsMissing, match="CLIP model folder not found"):
        ClipScorer.load(tmp_path / "nope")


# --- ImageReward ---------------------------------------------------------------------------------------------
# An independent plain-torch implementation of the original modules (BLIP's timm-style ViT and med.py's BERT with
# cross-attention), with the original parameter names. Its state dict is what ImageReward.pt holds; the scorer must
# load it through its key renames and give the same rewards.


class _RefViTAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _RefBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = _RefViTAttention(dim, heads)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(torch.nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class _RefViT(nn.Module):
    def __init__(self, dim=128, depth=2, heads=2, patch=16, image=32):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.5)
        self.blocks = nn.ModuleList([_RefBlock(dim, heads, 4 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, img):
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _RefBertAttention(nn.Module):
    def __init__(self, hidden, heads, kv_width):
        super().__init__()
        self.heads = heads
        self.self = nn.Module()
        self.self.query, self.self.key, self.self.value = (nn.Linear(hidden, hidden), nn.Linear(kv_width, hidden),
                                                           nn.Linear(kv_width, hidden))
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, h, context, additive_mask):
        def split(t):
            return t.view(t.shape[0], t.shape[1], self.heads, -1).permute(0, 2, 1, 3)

        q, k, v = split(self.self.query(h)), split(self.self.key(context)), split(self.self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if additive_mask is not None:
            scores = scores + additive_mask
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(h.shape)
        return self.output.LayerNorm(self.output.dense(ctx) + h)


class _RefBertLayer(nn.Module):
    def __init__(self, hidden, heads, inter, enc_width):
        super().__init__()
        self.attention = _RefBertAttention(hidden, heads, hidden)
        self.crossattention = _RefBertAttention(hidden, heads, enc_width)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, inter)
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(inter, hidden), nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, h, mask, image):
        a = self.attention(h, h, mask)
        c = self.crossattention(a, image, None)  # every image token is attended (image_atts are all ones)
        return self.output.LayerNorm(self.output.dense(torch.nn.functional.gelu(self.intermediate.dense(c))) + c)


class _RefBert(nn.Module):
    def __init__(self, vocab, hidden=32, heads=2, inter=64, layers=2, positions=40, enc_width=128):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, hidden)
        self.embeddings.position_embeddings = nn.Embedding(positions, hidden)
        self.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_RefBertLayer(hidden, heads, inter, enc_width) for _ in range(layers)])

    def forward(self, ids, mask, image):
        e = self.embeddings
        h = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(e.position_ids[:, :ids.shape[1]]))
        additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for layer in self.encoder.layer:
            h = layer(h, additive, image)
        return h


class _RefImageReward(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = _RefViT()
        self.blip.text_encoder = _RefBert(vocab)
        self.blip.vision_proj, self.blip.text_proj = nn.Linear(128, 16), nn.Linear(32, 16)  # unused by the reward
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(nn.Linear(32, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, pixels, ids, mask):
        image = self.blip.visual_encoder(pixels)
        first = self.blip.text_encoder(ids, mask, image)[:, 0, :]
        return (self.mlp.layers(first).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


WORDS = "a red blue green yellow circle square triangle on white black gray background the left right".split()


@pytest.fixture(scope="module")
def tiny_imagereward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    torch.manual_seed(0)
    ref = _RefImageReward(vocab=len(vocab) + 2).eval()  # + [DEC], [ENC], as BLIP's tokenizer adds them
    torch.save(ref.state_dict(), folder / "ImageReward.pt")
    med = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 32, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
           "encoder_width": 128, "add_cross_attention": True}
    (folder / "med_config.json").write_text(json.dumps(med))
    return folder, ref


def test_image_reward_matches_the_original_architecture(tiny_imagereward, scenes_images):
    from pocketsd.eval.image_reward import ImageRewardScorer, preprocess

    folder, ref = tiny_imagereward
    scorer = ImageRewardScorer.load(folder, tokenizer=folder, real_weights=False)
    texts = [s.caption for s in SCENES]
    got = scorer.rewards(scenes_images, texts)
    tokens = scorer.tokenizer(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (len(texts), 35) and (tokens["input_ids"][:, 0] == 2).all()  # [CLS] first
    pixels = torch.stack([preprocess(im, 32) for im in scenes_images])
    with torch.no_grad():
        expected = ref(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(torch.tensor(got), expected, atol=1e-4), (got, expected)
    assert expected.std() > 1e-3  # the images and prompts do move the reward
    result = scorer.score(scenes_images, texts)
    assert result.real_weights is False and any("unused" in n for n in result.notes)


def test_image_reward_preprocess_is_resize_short_side_then_centre_crop():
    from pocketsd.eval.image_reward import CLIP_MEAN, CLIP_STD, preprocess

    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))  # left half red, right half blue
    x = preprocess(image, 16)  # → 32×16, centre crop columns 8..24: 8 red then 8 blue
    red = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1], -CLIP_MEAN[2] / CLIP_STD[2]]
    assert x.shape == (3, 16, 16)
    assert x[:, 8, 0].tolist() == pytest.approx(red, abs=1e-4)
    assert x[2, 8, 15].item() == pytest.approx((1.0 - CLIP_MEAN[2]) / CLIP_STD[2], abs=1e-4)


def test_image_reward_missing_weights_skip_in_one_line(no_weights, tiny_imagereward):
    from pocketsd.eval.image_reward import ImageRewardScorer

    result = load_scorers(["image_reward"])["image_reward"]
    assert result.skipped.startswith("skipped image_reward: ImageReward.pt not found at ")
    assert "hf download THUDM/ImageReward ImageReward.pt med_config.json" in result.skipped
    folder, _ = tiny_imagereward
    with pytest.raises(WeightsMissing, match="BERT tokenizer not found for bert-base-uncased in the Hugging Face "
                                             "cache; download with `hf download bert-base-uncased"):
        ImageRewardScorer.load(folder)
    (no_weights / "med_config.json").write_text("{}")
    torch.save({"blip.text_encoder.x": torch.zeros(1)}, no_weights / "ImageReward.pt")
    with pytest.raises(WeightsMissing, match="is not an ImageReward checkpoint"):
        ImageRewardScorer.load(no_weights / "ImageReward.pt")


# --- statistics ----------------------------------------------------------------------------------------------


def test_intervals():
    from scipy import stats

    values = [1.0, 2.0, 4.0, 7.0]
    iv = mean_interval(values)
    low, high = stats.t.interval(0.95, df=3, loc=np.mean(values), scale=stats.sem(values))
    assert (iv.mean, iv.low, iv.high) == pytest.approx((3.5, low, high))
    inf = mean_interval([30.0, math.inf])
    assert inf.mean == math.inf and inf.low is None and "infinite" in inf.note
    wilson = proportion_interval([1] * 9 + [0])  # 9/10: Wilson 95 % interval (0.5958, 0.9821)
    assert (wilson.low, wilson.high) == pytest.approx((0.5958, 0.9821), abs=1e-4)
    assert proportion_interval([1, 1, 1]).high == 1.0 and proportion_interval([1, 1, 1]).low < 1.0
    lo, hi = bootstrap_interval(lambda idx: float(np.mean(np.asarray(values)[idx])), 4, resamples=50)
    assert 1.0 <= lo <= hi <= 7.0


# --- the whole layer -----------------------------------------------------------------------------------------


class _TinyFeatures(nn.Module):
    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, images):
        return torch.relu(self.conv(images.float() / 255)).mean(dim=(2, 3))


def test_score_images_random_weights_end_to_end(no_weights, scenes_images):
    from pocketsd.data.prompt_sets import Prompt

    prompts = [Prompt(f"p{i}", s.caption, None, s) for i, s in enumerate(SCENES)]
    scorers = load_scorers(random_weights=True)
    assert isinstance(scorers["fid"], FidScorer) and scorers["fid"].real_weights is False
    # The 2048-wide FID takes tens of seconds of eigendecomposition on a shared CPU; the same path with 8 features.
    scorers["fid"] = FidScorer(_TinyFeatures(), False, "random 8-feature net (test)", None)
    results = score_images(scenes_images, prompts, reference=scenes_images, scorers=scorers)
    assert results["psnr"].value == math.inf and results["ssim"].value == pytest.approx(1.0)
    assert results["lpips"].value == 0.0 and abs(results["fid"].value) < 1e-9
    assert results["lpips"].real_weights is False and results["fid"].real_weights is False
    assert results["adherence"].value == 1.0 and results["adherence_reference"].value == 1.0
    for name in ("clip_score", "image_reward", "clip_score_reference", "image_reward_reference"):
        assert results[name].skipped and "no random stand-in" in results[name].skipped
    text = json.dumps({k: r.to_dict() for k, r in results.items()})
    assert '"real_weights": false' in text and '"value": "inf"' in text
    only_test = score_images(scenes_images, [s.caption for s in SCENES], metrics=["psnr", "adherence"], scorers={})
    assert "--against" in only_test["psnr"].skipped and "grammar" in only_test["adherence"].skipped


def test_partial_evaluations_merge_to_the_one_shot_result(no_weights, scenes_images):
    from pocketsd.data.prompt_sets import Prompt
    from pocketsd.eval.scoring import Evaluation

    metrics = ("psnr", "ssim", "lpips", "fid", "adherence")
    scorers = {"lpips": LpipsScorer.random(), "fid": FidScorer(_TinyFeatures(), False, "random 8-feature net", None)}
    prompts = [Prompt(f"p{i}", s.caption, None, s) for i, s in enumerate(SCENES)]
    reference = _noisy(scenes_images, sigma=0.05)
    whole = score_images(scenes_images, prompts, reference=reference, metrics=metrics, scorers=scorers)
    parts = []
    for lo, hi in ((0, 4), (4, 6)):  # two "processes", each adding its shard in batches of one
        ev = Evaluation(metrics, scorers)
        for i in range(lo, hi):
            ev.add(scenes_images[i:i + 1], prompts[i:i + 1], reference=reference[i:i + 1])
        parts.append(ev.partial())
    merged = Evaluation.merge(parts, scorers, metrics).results()
    assert merged.keys() == whole.keys()
    for name in whole:  # batches of one against batches of six: float32 convolutions differ in the 7th digit
        a, b = merged[name], whole[name]
        for x, y in ((a.value, b.value), (a.low, b.low), (a.high, b.high), (a.n, b.n)):
            assert x == (None if y is None else pytest.approx(y, rel=1e-5, abs=1e-9))
        assert a.per_item == (None if b.per_item is None else pytest.approx(b.per_item, rel=1e-5, abs=1e-9))
    assert merged["lpips"].real_weights is False and merged["lpips"].weights.startswith("random AlexNet")
    with pytest.raises(ValueError, match="evaluated twice"):
        Evaluation.merge([parts[0], parts[0]], scorers, metrics)

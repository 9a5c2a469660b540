"""Tests for SDG-SOD: text, word attention maps, eq. 3 fusion, F3Net loss, phases and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tests.helpers.training import quiet_trainer as trainer
from usod.data.io import InvalidInputError
from usod.models.sdg import (
    PVTSOD,
    CaptionDecoderLayer,
    CaptioningModel,
    GridEncoder,
    GuidanceFusion,
    SDGCaptionGuided,
    StructureLoss,
    Vocabulary,
    guidance_map,
    normalize_map,
    reverse_captions,
    structure_weights,
    tokenize,
)

SIZE = 64
TINY = {
    "backbone": {"name": "pvt_v2_b0", "weights": "none"},
    "caption_backbone": {"name": "mobilenetv3_small_050", "weights": "none", "out_indices": [4]},
    "caption_image_size": SIZE,
    "decoder_dim": 32,
    "text_dim": 32,
    "text_layers": 1,
    "text_heads": 2,
    "max_caption_length": 12,
}
CAPTIONS = ["a red square on the left", "a blue star on the right", "a red star at the top"]
VOCAB = Vocabulary.build(CAPTIONS).tokens

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*no `val_dataloader`.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer` reference is not registered.*"),
    pytest.mark.filterwarnings("ignore:.*in eval mode at the start of training.*"),
]


def tiny_module(phase: str = "sod", **kwargs) -> SDGCaptionGuided:
    return SDGCaptionGuided(phase=phase, vocab=kwargs.pop("vocab", VOCAB), **{**TINY, **kwargs})


def tiny_captioner(vocab_size: int = 10, layers: int = 1, bidirectional: bool = True) -> CaptioningModel:
    from usod.models.backbones import build_encoder

    grid = GridEncoder(build_encoder(TINY["caption_backbone"]), d_model=16, image_size=SIZE)
    return CaptioningModel(
        grid, vocab_size, layers=layers, heads=2, max_length=8, bidirectional=bidirectional
    )


# ---------------------------------------------------------------------------------------------- text
def test_tokenizer_and_vocabulary() -> None:
    assert tokenize("A man's dog, jumping!  Over 2 logs.") == [
        "a",
        "man's",
        "dog",
        "jumping",
        "over",
        "2",
        "logs",
    ]
    vocab = Vocabulary.build(["b a a", "c a b"], min_count=2)
    # specials first, then by count (a: 3, b: 2), c dropped by min_count
    assert vocab.tokens == ["[PAD]", "[UNK]", "[SOS]", "[EOS]", "a", "b"]
    assert vocab.encode("A c b") == [2, 4, 1, 5, 3]
    assert vocab.encode("a b a b", max_length=4) == [2, 4, 5, 3]
    assert vocab.decode([2, 4, 5, 3, 4, 0]) == ["a", "b"]
    batch = vocab.encode_batch(["a", "a b b"])
    assert batch.tolist() == [[2, 4, 3, 0, 0], [2, 4, 5, 5, 3]]
    assert Vocabulary.build(["y x", "x"], max_size=5).tokens[4:] == ["x"]
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        Vocabulary(["[PAD]", "[UNK]", "[SOS]", "[EOS]", "a", "a"])


def test_vocabulary_sources(tmp_path: Path) -> None:
    coco = tmp_path / "captions.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "COCO_val_7.jpg"}],
                "annotations": [
                    {"id": 0, "image_id": 7, "caption": "A dog."},
                    {"id": 1, "image_id": 7, "caption": "a dog on grass"},
                ],
            }
        )
    )
    vocab = Vocabulary.from_source(coco)
    assert vocab.tokens[4:] == ["a", "dog", "grass", "on"]
    txt = vocab.save(tmp_path / "vocab.txt")
    assert Vocabulary.from_source(txt) == vocab
    assert Vocabulary.from_source(vocab.tokens) == vocab
    (tmp_path / "bad.txt").write_text("hello\n")
    with pytest.raises(InvalidInputError, match="bad.txt"):
        Vocabulary.from_source(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        Vocabulary.from_source(tmp_path / "missing.txt")


def test_reverse_captions() -> None:
    tokens = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 9, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0]])
    assert reverse_captions(tokens).tolist() == [
        [2, 7, 6, 5, 3, 0],
        [2, 9, 3, 0, 0, 0],
        [2, 3, 0, 0, 0, 0],
    ]


# ---------------------------------------------------------------------------------------------- attention
def test_decoder_layer_returns_causal_cross_attention() -> None:
    torch.manual_seed(0)
    layer = CaptionDecoderLayer(dim=16, heads=2, ffn_dim=32, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    memory = torch.randn(2, 9, 16)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    out, weights = layer(x, memory, causal)
    assert out.shape == (2, 5, 16)
    assert weights.shape == (2, 2, 5, 9)  # B x heads x T x N
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 5), atol=1e-5)
    # a later token changes neither the earlier outputs nor their attention
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 2, 16)
    out2, weights2 = layer(x2, memory, causal)
    assert torch.allclose(out[:, :3], out2[:, :3], atol=1e-5)
    assert torch.allclose(weights[:, :, :3], weights2[:, :, :3], atol=1e-5)
    assert not torch.allclose(weights[:, :, 3:], weights2[:, :, 3:], atol=1e-3)


class ScriptedLogits(nn.Module):
    """Wraps a textual decoder and forces the next token at every position to follow a script."""

    def __init__(self, decoder: nn.Module, scripts: list[list[int]], vocab_size: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.scripts = scripts
        self.vocab_size = vocab_size

    def forward(self, tokens, memory):
        _, weights = self.decoder(tokens, memory)
        b, t = tokens.shape
        logits = torch.zeros(b, t, self.vocab_size)
        for i, script in enumerate(self.scripts[:b]):
            for pos in range(t):
                logits[i, pos, script[min(pos, len(script) - 1)]] = 10.0
        return logits, weights


def test_one_normalised_attention_map_per_generated_word() -> None:
    torch.manual_seed(0)
    cap = tiny_captioner(vocab_size=10).eval()
    # image 0 says 3 words then [EOS]; image 1 one word; image 2 never stops (cut at max_length 8 -> 7 words)
    cap.forward_decoder = ScriptedLogits(
        cap.forward_decoder, [[5, 6, 7, 3], [9, 3], [4, 5, 6, 7, 8, 9, 4, 5]], 10
    )
    g = cap.describe(torch.rand(3, 3, SIZE, SIZE))
    assert g.lengths.tolist() == [3, 1, 7]
    assert g.tokens[0].tolist()[:5] == [2, 5, 6, 7, 3]
    assert (g.tokens[0, 5:] == 0).all() and (g.tokens[1, 3:] == 0).all()
    assert g.tokens[2].tolist() == [2, 4, 5, 6, 7, 8, 9, 4]  # no [EOS]: cut at max_length
    gh, gw = SIZE // 32, SIZE // 32
    assert g.maps.shape == (3, 7, gh, gw)
    assert g.valid.tolist()[0] == [True] * 3 + [False] * 4
    sums = g.maps.sum(dim=(2, 3))
    assert torch.allclose(sums[g.valid], torch.ones(int(g.valid.sum())), atol=1e-5)
    assert (g.maps[~g.valid] == 0).all()
    assert (g.maps >= 0).all()
    # M_j is the cross-attention of the position that emits word j (input c_{j-1}), head-averaged
    memory, grid = cap.encode(torch.rand(1, 3, SIZE, SIZE))
    tokens = torch.tensor([[2, 5, 6, 7, 3]])
    single = cap.word_attention(memory, grid, tokens, torch.tensor([3]))
    _, weights = cap.forward_decoder.decoder(tokens[:, :3], memory)
    assert torch.allclose(single.maps[0], weights[-1][0].mean(0).reshape(3, gh, gw))


def test_module_describe_gives_words_and_maps() -> None:
    module = tiny_module("fused").eval()
    out = module.describe(torch.rand(2, 3, SIZE, SIZE))
    assert len(out) == 2
    for item in out:
        assert len(item["words"]) == item["maps"].shape[0] == len(item["caption"].split())
        assert item["maps"].shape[1:] == (SIZE // 32, SIZE // 32)
        assert np.allclose(item["maps"].sum(axis=(1, 2)), 1.0, atol=1e-5)
        assert all(w in module.vocab.index for w in item["words"])


# ---------------------------------------------------------------------------------------------- fusion
def test_guidance_map_is_normalised_sum_of_resized_maps() -> None:
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    maps[0, 1] = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
    maps[0, 2] = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # past the caption's end
    valid = torch.tensor([[True, True, False]])
    g = guidance_map(maps, valid, (2, 2), "max")
    assert torch.allclose(g, torch.tensor([[[[1.0, 0.5], [0.5, 0.0]]]]))
    # resize each map, sum, normalise: against a hand computation at 4x4
    g4 = guidance_map(maps, valid, (4, 4), "minmax")
    resized = [F.interpolate(maps[:, j : j + 1], size=(4, 4), mode="bilinear") for j in range(2)]
    s = resized[0] + resized[1]
    assert torch.allclose(g4, (s - s.min()) / (s.max() - s.min()))
    assert float(g4.min()) == 0.0 and float(g4.max()) == pytest.approx(1.0)
    # per-image normalisation and the degenerate cases
    two = torch.stack([maps[0], 3 * maps[0]])
    g2 = guidance_map(two, torch.ones(2, 3, dtype=torch.bool), (2, 2), "max")
    assert torch.allclose(g2[0], g2[1]) and float(g2.amax()) == pytest.approx(1.0)
    assert (normalize_map(torch.zeros(1, 1, 3, 3), "max") == 0).all()
    assert (guidance_map(torch.zeros(2, 0, 2, 2), None, (5, 5)) == 0).all()
    with pytest.raises(ValueError, match="normalization"):
        normalize_map(torch.ones(1, 1, 2, 2), "softmax")


def test_fusion_follows_equation_3() -> None:
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    maps = torch.rand(2, 5, 2, 2)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    fusion = GuidanceFusion([4, 6], levels=(0, 1), mode="max")
    # xi starts at zero: the fused model equals the unguided one
    for f, out in zip(features, fusion(features, maps, valid), strict=True):
        assert torch.equal(f, out)
    for conv in fusion.xi:
        nn.init.normal_(conv.weight)
        nn.init.normal_(conv.bias)
    out = fusion(features, maps, valid)
    for i, f in enumerate(features):
        m = maps * valid[..., None, None]
        s = sum(F.interpolate(m[:, j : j + 1], size=f.shape[-2:], mode="bilinear") for j in range(5))
        g = s / s.amax(dim=(1, 2, 3), keepdim=True)
        w, bias = fusion.xi[i].weight[:, :, 0, 0], fusion.xi[i].bias
        expected = torch.einsum("oc,bchw->bohw", w, f * g) + bias.view(1, -1, 1, 1) + f
        assert torch.allclose(out[i], expected, atol=1e-5)
    only_first = GuidanceFusion([4, 6], levels=(0,))
    assert torch.equal(only_first(features, maps, valid)[1], features[1])
    with pytest.raises(ValueError, match="out of range"):
        GuidanceFusion([4, 6], levels=(2,))


# ---------------------------------------------------------------------------------------------- loss
def _structure_loss_reference(logits: np.ndarray, target: np.ndarray) -> float:
    """F3Net's structure loss written with loops, one image at a time."""
    losses = []
    for z, g in zip(logits[:, 0].astype(np.float64), target[:, 0].astype(np.float64), strict=True):
        h, w = g.shape
        padded = np.pad(g, 15)
        local = np.array([[padded[y : y + 31, x : x + 31].sum() / 31**2 for x in range(w)] for y in range(h)])
        weit = 1 + 5 * np.abs(local - g)
        p = 1 / (1 + np.exp(-z))
        bce = -(g * np.log(p) + (1 - g) * np.log(1 - p))
        wbce = (weit * bce).sum() / weit.sum()
        inter = (p * g * weit).sum()
        union = ((p + g) * weit).sum()
        losses.append(wbce + 1 - (inter + 1) / (union - inter + 1))
    return float(np.mean(losses))


def test_structure_loss_matches_f3net() -> None:
    rng = np.random.default_rng(0)
    target = np.zeros((2, 1, 20, 24), np.float32)
    target[0, 0, 4:12, 5:15] = 1.0
    target[1, 0, 10:, :8] = 0.7
    logits = rng.normal(0, 2, target.shape).astype(np.float32)
    loss = StructureLoss()(torch.from_numpy(logits), torch.from_numpy(target))
    assert float(loss) == pytest.approx(_structure_loss_reference(logits, target), rel=1e-5)
    w = structure_weights(torch.from_numpy(target))
    assert float(w.min()) >= 1.0 and float(w.max()) <= 6.0
    big = torch.zeros(1, 1, 64, 64)
    big[..., :10, :10] = 1.0
    wb = structure_weights(big)
    assert float(wb[0, 0, 40, 40]) == 1.0  # more than 15 pixels from the object
    assert float(wb[0, 0, 9, 10]) == pytest.approx(1 + 5 * 100 / 961)  # count_include_pad, as F3Net
    binary = torch.from_numpy((target > 0.5).astype(np.float32))
    good = StructureLoss()(binary * 40 - 20, binary)
    assert float(good) < 0.01
    with pytest.raises(ValueError, match="shape"):
        StructureLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 4))


# ---------------------------------------------------------------------------------------------- networks
def test_pvt_sod_shapes() -> None:
    from usod.models.backbones import build_encoder

    sod = PVTSOD(build_encoder(TINY["backbone"]), dim=16)
    assert sod.channels == [32, 64, 160, 256]
    features = sod.features(torch.rand(2, 3, SIZE, SIZE))
    assert [f.shape[-1] for f in features] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    assert sod.decoder(features).shape == (2, 1, SIZE // 4, SIZE // 4)
    assert sod(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 1, SIZE, SIZE)


def test_caption_loss_is_finite_at_start_and_learns() -> None:
    torch.manual_seed(0)
    module = tiny_module("caption", text_dropout=0.0)
    cap = module.model.captioner
    images = torch.rand(3, 3, SIZE, SIZE)
    tokens = module.tokens(CAPTIONS)
    start = cap.caption_loss(images, tokens)
    assert set(start) == {"forward", "backward"}
    assert float(start["forward"].detach()) < 2 * np.log(len(VOCAB))  # small initial logits (0.02 embeddings)
    opt = torch.optim.AdamW([p for p in cap.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        loss = sum(cap.caption_loss(images, tokens).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * float(sum(start.values()))
    cap.eval()
    words = [d["caption"] for d in module.describe(images)]
    assert words == CAPTIONS  # three captions overfit, greedily generated back


# ---------------------------------------------------------------------------------------------- phases
def test_phases_train_only_their_branch() -> None:
    def trainable(module: SDGCaptionGuided) -> set[str]:
        return {name.split(".")[1] for name, p in module.named_parameters() if p.requires_grad}

    assert trainable(tiny_module("caption")) == {"captioner"}
    assert trainable(tiny_module("sod")) == {"sod"}
    assert trainable(tiny_module("fused")) == {"sod", "fusion"}
    fused = tiny_module("fused")  # as built, before any .train() call: Lightning keeps these modes
    assert not fused.model.captioner.training and fused.model.sod.training
    fused.eval().train()
    assert not fused.model.captioner.training and fused.model.sod.training
    caption = tiny_module("caption").train()
    assert caption.model.captioner.training and not caption.model.sod.training
    with pytest.raises(ValueError, match="phase"):
        tiny_module("joint")
    with pytest.raises(ValueError, match="vocabulary"):
        SDGCaptionGuided(vocab=None, **TINY)


def _samples(n: int = 4, caption: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 10 + 4 * i : 40 + 4 * i, 8 : 30 + 4 * i] = 1.0
        image = (0.2 * torch.rand(3, SIZE, SIZE, generator=g) + 0.7 * mask).clamp(0, 1)
        sample = {
            "image": image,
            "mask": mask,
            "pseudo": mask.roll(2, dims=2),
            "id": f"s{i}",
            "size": torch.tensor([SIZE, SIZE]),
        }
        if caption:
            sample["caption"] = CAPTIONS[i % 3]
        out.append(sample)
    return out


def _save(module: SDGCaptionGuided, path: Path) -> Path:
    """A checkpoint as Lightning writes it (state dict, hyper-parameters, usod class key)."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_init_from_takes_each_phase_branch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    caption = tiny_module("caption")
    sod = tiny_module("sod")
    c_path, s_path = _save(caption, tmp_path / "c.ckpt"), _save(sod, tmp_path / "s.ckpt")
    assert torch.load(s_path, weights_only=True)["sdg_branches"] == ["sod"]
    fused = tiny_module("fused", init_from=[str(c_path), str(s_path)])
    # the captioner comes from the caption run, PVT-SOD from the sod run (its untrained captioner is ignored)
    assert fused.vocab.tokens == VOCAB
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    assert fused.trained_branches == {"sod", "fusion"}
    loaded = fused.load_init_checkpoints(fused.hparams.init_from)
    assert list(loaded.values()) == [["captioner"], ["sod"]]
    assert fused.trained_branches == {"captioner", "sod", "fusion"}
    state = fused.state_dict()
    for key, value in caption.state_dict().items():
        if key.startswith("model.captioner."):
            assert torch.equal(state[key], value), key
    for key, value in sod.state_dict().items():
        if key.startswith("model.sod."):
            assert torch.equal(state[key], value), key
    assert all(torch.equal(state[k], before[k]) for k in state if k.startswith("model.fusion."))
    # chained: a sod run started from the caption run carries its captioner on
    chained = tiny_module("sod", init_from=str(c_path))
    chained.load_init_checkpoints([c_path])
    chained_path = _save(chained, tmp_path / "chained.ckpt")
    assert torch.load(chained_path, weights_only=True)["sdg_branches"] == ["captioner", "sod"]
    fused2 = tiny_module("fused")
    assert list(fused2.load_init_checkpoints([chained_path]).values()) == [["captioner", "sod"]]
    assert torch.equal(
        fused2.state_dict()["model.captioner.embedding.words.weight"],
        caption.state_dict()["model.captioner.embedding.words.weight"],
    )
    # used without fitting (README: build the fused model, then describe), init_from is loaded first
    direct = tiny_module("fused", init_from=[str(c_path), str(s_path)]).eval()
    images = torch.rand(1, 3, 64, 64)
    assert direct.describe(images)[0]["words"] == caption.eval().describe(images)[0]["words"]
    assert direct.trained_branches == {"captioner", "sod", "fusion"}
    # the vocabulary can come from init_from alone
    assert tiny_module("fused", vocab=None, init_from=str(c_path)).vocab.tokens == VOCAB
    other = tiny_module("fused", vocab=VOCAB + ["zebra"])
    with pytest.raises(InvalidInputError, match="vocabulary"):
        other.load_init_checkpoints([c_path])
    other.load_init_checkpoints([s_path])  # PVT-SOD alone does not depend on the vocabulary
    with pytest.raises(FileNotFoundError):
        other.load_init_checkpoints([tmp_path / "none.ckpt"])


def test_training_steps_per_phase_and_supervision() -> None:
    torch.manual_seed(0)
    samples = _samples()
    loader = DataLoader(samples, batch_size=2)
    for phase, supervision in (("caption", "pseudo"), ("sod", "mask"), ("fused", "pseudo")):
        module = tiny_module(phase, supervision=supervision, lr=1e-3)
        trainer(max_steps=2, num_sanity_val_steps=0).fit(module, loader, DataLoader(samples, batch_size=2))
        preds = trainer().predict(module, DataLoader(samples, batch_size=2))
        assert preds[0]["saliency"].shape == (2, 1, SIZE, SIZE)
        assert float(preds[0]["saliency"].min()) >= 0 and float(preds[0]["saliency"].max()) <= 1
    no_caption = DataLoader(_samples(caption=False), batch_size=2)
    with pytest.raises(ValueError, match="caption"):
        trainer(max_steps=1).fit(tiny_module("caption"), no_caption)
    without_pseudo = [{k: v for k, v in s.items() if k != "pseudo"} for s in samples]
    with pytest.raises(ValueError, match="pseudo_dir"):
        trainer(max_steps=1).fit(tiny_module("sod"), DataLoader(without_pseudo, batch_size=2))


def test_sod_training_lowers_structure_loss() -> None:
    torch.manual_seed(0)
    samples = _samples()
    module = tiny_module("sod", supervision="mask", lr=3e-3)
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "mask")}
    with torch.no_grad():
        start = float(module.eval().loss_fn(module(batch["image"]), batch["mask"]))
    module.train()
    trainer(max_epochs=30).fit(module, DataLoader(samples, batch_size=4))
    module.eval()
    with torch.no_grad():
        assert float(module.loss_fn(module(batch["image"]), batch["mask"])) < 0.7 * start


def test_checkpoint_roundtrip_through_load_module(tmp_path: Path) -> None:
    from usod.models.base import load_module

    start = _save(tiny_module("caption"), tmp_path / "gone.ckpt")
    module = tiny_module("fused", init_from=str(start), vocab=VOCAB).eval()
    images = torch.rand(1, 3, SIZE, SIZE)
    expected = module.predict_saliency(images)  # loads init_from first
    path = _save(module, tmp_path / "fused.ckpt")
    start.unlink()
    loaded = load_module(path)  # its own weights: init_from is not read again
    assert isinstance(loaded, SDGCaptionGuided) and loaded.vocab == module.vocab
    assert torch.allclose(loaded.predict_saliency(images), expected)


# ---------------------------------------------------------------------------------------------- CLI
def _phase_config(tmp_path: Path, data: Path, phase: str, init_from: Path | None) -> Path:
    import yaml

    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "configs/experiment/sdg_synth.yaml").read_text())
    config["model"]["init_args"].update(
        {k: v for k, v in TINY.items() if k != "max_caption_length"},
        phase=phase,
        vocab=str(data / "captions.json"),
        init_from=str(init_from) if init_from else None,
        max_caption_length=40,
    )
    config["data"]["init_args"].update(root=str(data), image_size=SIZE, batch_size=3, num_workers=0)
    config["trainer"].update(
        max_epochs=1, default_root_dir=str(tmp_path / phase), enable_progress_bar=False, log_every_n_steps=1
    )
    path = tmp_path / f"{phase}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_cli_runs_the_three_phases_and_predicts_captions(tmp_path: Path) -> None:
    from PIL import Image

    from usod.cli import main
    from usod.data.synth import write_dataset

    data = write_dataset(tmp_path / "data", "rgb", 6, size=(48, 48))
    ckpt = None
    states = {}
    for phase in ("caption", "sod", "fused"):
        main(["fit", "--config", str(_phase_config(tmp_path, data, phase, ckpt))])
        found = sorted((tmp_path / phase).rglob("*.ckpt"))
        assert found, f"phase {phase} left no checkpoint"
        ckpt = found[-1]
        saved = torch.load(ckpt, weights_only=True)
        assert saved["hyper_parameters"]["phase"] == phase
        states[phase] = saved["state_dict"]
    # each phase trained its branch and carried the earlier ones on
    key_c, key_s = "model.captioner.embedding.words.weight", "model.sod.decoder.head.weight"
    assert torch.equal(states["fused"][key_c], states["caption"][key_c])
    assert not torch.equal(states["sod"][key_s], states["caption"][key_s])
    assert not torch.equal(states["fused"][key_s], states["sod"][key_s])
    assert states["fused"]["model.fusion.xi.0.weight"].abs().sum() > 0
    out = tmp_path / "pred"
    args = ["predict", "--ckpt", str(ckpt), "--input", str(data / "images"), "--output", str(out)]
    assert main([*args, "--num-workers", "0", "--captions"]) == 0
    for image_path in sorted((data / "images").glob("*.jpg")):
        stem = image_path.stem
        assert Image.open(out / f"{stem}.png").size == (48, 48)
        words = (out / f"{stem}.txt").read_text().split()
        maps = sorted((out / f"{stem}_attn").glob("*.png"))
        assert len(maps) == len(words) > 0  # one map per generated word
        assert [m.stem.split("_", 1)[1] for m in maps] == [w.replace("'", "_") for w in words]
        assert maps[0].stem.startswith("01_")
        first = np.asarray(Image.open(maps[0]))
        assert first.shape == (48, 48) and first.max() == 255


def test_predict_captions_flag_errors_for_other_models(tmp_path: Path, capsys) -> None:
    from usod.cli import main
    from usod.models.cue_extractor import CueExtractor

    module = CueExtractor(backbone={"name": "resnet18", "weights": "none"})
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "cue.ckpt")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    args = [
        "predict",
        "--ckpt",
        str(tmp_path / "cue.ckpt"),
        "--input",
        str(images),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--captions"]) == 2
    assert "--captions needs a model that captions images; CueExtractor" in capsys.readouterr().err

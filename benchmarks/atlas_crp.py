"""zennit-crp's ``FeatureVisualization`` on given models and data: the anchor of the atlas suite.

The crp side runs in the side environment ``.venv-crp`` (zennit 0.4.6, zennit-crp 0.6.0;
``make crp-env``) as a script that needs only torch, numpy, zennit and crp::

    .venv-crp/bin/python benchmarks/atlas_crp.py job.pt answer.pt

The main side (:func:`run_crp`, :func:`compare`; imported by ``benchmarks/atlas.py``, loads no
crp) writes the job, runs the script and compares crp's tables with ConceptAtlas' ``top``.

Job: ``models`` (name → an ``nn.Module`` of standard torch layers), ``x`` (N, C, H, W), ``y``
(N,), ``layers``, ``batch_size``, ``threads``. Answer per model: the seconds of
``FeatureVisualization.run`` and, per layer and mode, crp's table (sample indices and values,
(40, C), best first).

Configuration (stated in the report):

- Composite: ``SpecialFirstLayerMapComposite`` with ``Pass`` on activations, ``Norm`` on average
  pooling, ``ZPlus`` on convolutions and dense layers, ``Flat`` on the first layer — the rules
  of ``zennit_ext.nrm.rules.nrm_composite(gamma=None)`` (whose extra entries, residual ``Sum``
  and ``Multiply``, do not occur in these models).
- RelMax: crp's defaults, ``max_target='sum'`` (spatial sum of the relevance at the layer's
  output), ``abs_norm=True`` (divided by the sum of |relevance| over the layer's channels).
- ActMax: ``max_target='max'``, ``abs_norm=False``: the activation's spatial maximum, the
  definition of ConceptAtlas' ``actmax`` (crp's default, the spatial sum normalised per sample
  over channels, is another order).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

#: The side environment's interpreter (``make crp-env``).
SIDE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-crp" / "bin" / "python"


def run_crp(
    models: dict, x: torch.Tensor, y: torch.Tensor, layers: list[str], batch_size: int
) -> dict:
    """crp's answer (see the module docstring) for ``models`` on ``(x, y)``, same threads as
    this process. Raises RuntimeError with crp's stderr if the side process fails."""
    with tempfile.TemporaryDirectory() as folder:
        job, answer = Path(folder) / "job.pt", Path(folder) / "answer.pt"
        torch.save(
            {
                "models": models,
                "x": x,
                "y": y,
                "layers": layers,
                "batch_size": batch_size,
                "threads": torch.get_num_threads(),
            },
            job,
        )
        done = subprocess.run(
            [str(SIDE_PYTHON), __file__, str(job), str(answer)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"zennit-crp side process failed:\n{done.stderr[-4000:]}")
        return torch.load(answer, weights_only=False)


def compare(ours: dict, theirs: dict, k: int, rtol: float = 1e-5) -> dict:
    """Agreement of two top-k tables of one layer and mode.

    ``ours`` = ``(indices, values)`` (units, k) from ``ConceptAtlas.top``; ``theirs`` = crp's
    ``(indices, values)`` (≥ k, units). Returns the share of units whose ``k`` indices are
    equal, equal up to (near-)ties (the lists differ only where the values agree within
    ``rtol``), the mean overlap of the index sets (of ``k``) and the largest relative
    difference of the values position by position.
    """
    our_i, our_v = ours
    their_i, their_v = theirs[0][:k].T, theirs[1][:k].T.to(torch.float64)
    our_v = our_v.to(torch.float64)
    same = (our_i == their_i).all(1)
    scale = our_v.abs().amax(1, keepdim=True).clamp(min=1e-30)
    close = ((our_v - their_v).abs() <= rtol * scale).all(1)
    overlap = [len(set(a) & set(b)) for a, b in zip(our_i.tolist(), their_i.tolist(), strict=True)]
    return {
        "units equal": float(same.double().mean()),
        "equal up to ties": float((same | close).double().mean()),
        "mean overlap": sum(overlap) / len(overlap),
        "max rel. value diff": float(((our_v - their_v).abs() / scale).max()),
    }


class _Items(torch.utils.data.Dataset):  # crp side
    """``(x_i, int(y_i))``: crp collects labels into a numpy array."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y.tolist()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def composite():  # noqa: ANN201 - crp side
    """``nrm_composite(gamma=None)``'s rules in zennit 0.4.6."""
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import Flat, Norm, Pass, ZPlus
    from zennit.types import Activation, AvgPool, Convolution, Linear

    return SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (AvgPool, Norm()),
            (Convolution, ZPlus()),
            (torch.nn.Linear, ZPlus()),
        ],
        first_map=[(Linear, Flat())],
    )


def feature_visualization(model, x, y, layers, batch_size, folder) -> tuple[float, dict]:
    """crp's ActMax / RelMax tables of ``layers`` and the seconds of ``run`` (crp side)."""
    import numpy as np
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import load_maximization
    from crp.maximization import Maximization
    from crp.statistics import Statistics
    from crp.visualization import FeatureVisualization

    attribution = CondAttribution(model, no_param_grad=True)
    fv = FeatureVisualization(
        attribution, _Items(x, y), {name: ChannelConcept() for name in layers}, path=folder
    )
    fv.ActMax = Maximization("activation", "max", False, folder)
    fv.ActStats = Statistics("activation", "max", False, folder)
    start = time.perf_counter()
    fv.run(composite(), 0, len(x), batch_size=batch_size, checkpoint=10**9)
    seconds = time.perf_counter() - start
    tables = {}
    for mode, path in (("actmax", fv.ActMax.PATH), ("relmax", fv.RelMax.PATH)):
        for name in layers:
            indices, values, _ = load_maximization(path, name)
            tables[(name, mode)] = (
                torch.from_numpy(np.array(indices, dtype=np.int64)),
                torch.from_numpy(np.array(values)),
            )
    return seconds, tables


def main(job_path: str, answer_path: str) -> None:
    job = torch.load(job_path, weights_only=False)
    torch.set_num_threads(job["threads"])
    answer = {"versions": {}, "models": {}}
    from importlib.metadata import version

    for package in ("torch", "zennit", "zennit-crp"):
        answer["versions"][package] = version(package)
    for name, model in job["models"].items():
        with tempfile.TemporaryDirectory() as folder:
            seconds, tables = feature_visualization(
                model.eval(), job["x"], job["y"], job["layers"], job["batch_size"], folder
            )
        answer["models"][name] = {"seconds": seconds, "tables": tables}
    torch.save(answer, answer_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])

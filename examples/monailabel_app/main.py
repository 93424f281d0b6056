"""A minimal radiology-style MONAI Label app that proposes volumes by RPR.

One infer task segments single-channel NIfTI volumes with a bias-free ``PocketUNet`` through
MONAI's sliding-window inferer; ``RPRScoring`` stores the Right Projection Ratio of every
unlabelled volume and ``RPRStrategy`` serves the lowest first. Start it with

    monailabel start_server --app examples/monailabel_app --studies DIR \
        --conf skip_scoring false --conf skip_strategies false

Options (``--conf NAME VALUE``): ``k`` (singular triplets, default 4), ``roi_size`` (window
edge, default 32), ``filters``, ``depth`` and ``seed`` of the network, ``skip_scoring`` and
``skip_strategies`` (both default ``true``, as in MONAI Label's radiology app). Weights are
read from ``model/pocket_unet.pt`` beside this file when present (a ``state_dict`` saved with
``torch.save({"model": net.state_dict()}, path)``); without them the network keeps its random
initial weights (seeded), which is enough to try the workflow.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    SqueezeDimd,
    ToNumpyd,
)
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import strtobool

from rprselect.integrations.monailabel import RPRScoring, RPRStrategy
from rprselect.models import PocketUNet

logger = logging.getLogger(__name__)


class PocketSegmentation(BasicInferTask):
    """Foreground segmentation of a single-channel volume with a bias-free PocketUNet."""

    def __init__(self, path: str, network: Any, roi_size: int) -> None:
        super().__init__(
            path=path,
            network=network,
            type=InferType.SEGMENTATION,
            labels={"foreground": 1},
            dimension=3,
            description="Bias-free PocketUNet segmentation (scored by RPR)",
            roi_size=(roi_size,) * 3,
        )

    def pre_transforms(self, data: Any = None) -> list[Any]:
        return [
            LoadImaged(keys="image"),
            EnsureTyped(keys="image"),
            EnsureChannelFirstd(keys="image"),
            NormalizeIntensityd(keys="image", nonzero=True),
        ]

    def inferer(self, data: Any = None) -> Inferer:
        shape = data[self.input_key].shape[1:] if data else None
        if shape is not None and all(s <= r for s, r in zip(shape, self.roi_size, strict=True)):
            return SimpleInferer()
        return SlidingWindowInferer(roi_size=self.roi_size, overlap=0.25, sw_batch_size=4)

    def post_transforms(self, data: Any = None) -> list[Any]:
        return [
            EnsureTyped(keys="pred"),
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            SqueezeDimd(keys="pred", dim=0),
            ToNumpyd(keys="pred"),
        ]


class RPRApp(MONAILabelApp):
    """Segmentation by a PocketUNet, proposals by RPR."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = conf or {}
        self.k = int(conf.get("k", "4"))
        self.roi = int(conf.get("roi_size", "32"))
        # Seeded, so that without a checkpoint the server and the scoring subprocesses that
        # MONAI Label starts build the same weights (a new model version means a new score).
        with torch.random.fork_rng():
            torch.manual_seed(int(conf.get("seed", "0")))
            self.network = PocketUNet(
                in_channels=1,
                out_channels=2,
                dims=3,
                depth=int(conf.get("depth", "3")),
                filters=int(conf.get("filters", "8")),
            )
        self.model_path = os.path.join(app_dir, "model", "pocket_unet.pt")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="rprselect-pocketunet",
            description="Active learning by the Right Projection Ratio (rprselect)",
            version="0.1.0",
            labels={"foreground": 1},
        )

    def init_infers(self) -> dict[str, Any]:
        return {"segmentation": PocketSegmentation(self.model_path, self.network, self.roi)}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        if strtobool(self.conf.get("skip_scoring", "true")):
            return {}
        return {"rpr": RPRScoring(self._infers["segmentation"], k=self.k)}

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random()}
        if not strtobool(self.conf.get("skip_strategies", "true")):
            strategies["rpr"] = RPRStrategy()
        return strategies

"""`STModel`: a trained model ready to predict, and `load_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adaptation import ADAPTATION_MODES, FeatureStats, SlideAdaptation, estimate_adaptation
from .card import default_model_path
from .checkpoint import CheckpointError, read_checkpoint
from .cmrcnet import CMRCNet
from .config import IOContract, ModelConfig, RetrievalSettings
from .precision import InferencePrecision, precision_for
from .predictor import ReferenceBank, RidgeHead, retrieve

__all__ = ["STModel", "load_model", "default_model_path", "select_device"]


def select_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA if present, else Apple MPS, else CPU; or the device asked for (checked)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA GPU is available here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r}: Apple MPS is not available here")
    return dev


class STModel:
    """A trained CMRCNet with its IO contract, reference bank and ridge head.

    Use `load_model` to get one. All inputs are RGB uint8 patches read at
    ``io.patch_um`` µm per ``io.input_px`` pixels.
    """

    def __init__(
        self,
        network: CMRCNet,
        io: IOContract,
        bank: ReferenceBank,
        ridge: RidgeHead | None = None,
        *,
        provenance: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
        retrieval: RetrievalSettings | None = None,
        source: str = "",
        device: str | torch.device = "auto",
    ) -> None:
        self.network = network.eval()
        self.io = io
        self.bank = bank
        self.ridge = ridge
        self.provenance = provenance or {}
        self.evaluation = evaluation or {}
        self.calibration = calibration  # also sets training_feature_stats
        #: Top-k and spatial context the model was evaluated and calibrated with (the
        #: engine's defaults).
        self.retrieval = retrieval or RetrievalSettings()
        self.source = source
        self.device = torch.device("cpu")
        #: The encoder's arithmetic and layout on this device (`model.precision`); set by `to`.
        self.precision = InferencePrecision()
        self.to(device)

    @property
    def calibration(self) -> dict[str, Any] | None:
        """Trust calibration (see `napari_stpredict.training.calibration`): the training
        images' features for the out-of-domain score and the tumour-score standardisation
        and threshold; None for checkpoints written before it existed."""
        return self._calibration

    @calibration.setter
    def calibration(self, value: dict[str, Any] | None) -> None:
        # The training images' feature statistics, the target of per-slide adaptation, are
        # taken here from the raw reference features, before `to` normalises them.
        self._calibration = value
        self.training_feature_stats: FeatureStats | None = (
            FeatureStats.of(value["domain"]["reference"].float()) if value is not None else None
        )

    @property
    def genes(self) -> list[str]:
        """Predicted genes in output order."""
        return list(self.io.genes)

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    def to(self, device: str | torch.device) -> STModel:
        """Move the network and bank to a device ("auto": CUDA > MPS > CPU)."""
        self.device = select_device(device)
        self.network.to(self.device)
        self.set_precision(precision_for(self.device))
        self.bank = ReferenceBank(self.bank.embeddings.to(self.device), self.bank.expression.to(self.device))
        if self.ridge is not None:
            self.ridge = RidgeHead(self.ridge.weight.to(self.device), self.ridge.bias.to(self.device), self.ridge.alpha)
        if self.calibration is not None:
            domain = dict(self.calibration["domain"])
            domain["reference"] = torch.nn.functional.normalize(domain["reference"].float(), dim=1).to(self.device)
            self._calibration = {**self.calibration, "domain": domain}  # statistics kept from the raw features
        return self

    def set_precision(self, precision: InferencePrecision) -> STModel:
        """Run the encoder with this precision policy (the device's default is set by `to`;
        tests force the CUDA policy on the CPU with ``InferencePrecision.reduced()``)."""
        self.precision = precision
        fmt = torch.channels_last if precision.channels_last else torch.contiguous_format
        self.network.to(memory_format=fmt)
        return self

    def preprocess(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` patches -> normalised float ``(B, 3, H, W)`` on the device
        (in the memory layout of `precision`)."""
        x = torch.as_tensor(np.asarray(patches) if not isinstance(patches, torch.Tensor) else patches)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"patches must be (batch, height, width, 3) RGB, got shape {tuple(x.shape)}")
        # uint8 crosses to the device (a quarter of float32's bytes), then is converted there.
        x = self.precision.to_device(x, self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.io.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.io.std, device=self.device).view(1, 3, 1, 1)
        return self.precision.layout((x - mean) / std)

    @torch.inference_mode()
    def embed(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, embed_dim)`` (float32) of uint8 patches."""
        x = self.preprocess(patches)
        with self.precision.autocast(self.device):
            emb = self.network.encode_image(x)
        return emb.float()

    @torch.inference_mode()
    def embed_with_features(
        self, patches: np.ndarray | torch.Tensor, *, adaptation: SlideAdaptation | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings ``(B, embed_dim)`` and the pooled backbone features they are
        projected from ``(B, num_features)``, in one pass (the features feed the
        out-of-domain score).

        With ``adaptation`` (`slide_adaptation`) the embeddings are projected from the
        adapted features; the features returned are always the raw ones."""
        x = self.preprocess(patches)
        with self.precision.autocast(self.device):
            features = self.network.image_tokens(x).mean(dim=1)
        features = features.float()
        return self.embed_features(features, adaptation=adaptation), features

    @torch.inference_mode()
    def embed_features(self, features: torch.Tensor, *, adaptation: SlideAdaptation | None = None) -> torch.Tensor:
        """Image embeddings of pooled backbone features, adapted first when ``adaptation``
        is given."""
        features = features.float().to(self.device)
        if adaptation is not None:
            features = adaptation.apply(features)
        return self.network.image_projection(features).float()

    def features_many(self, patches: np.ndarray, *, batch_size: int = 128) -> torch.Tensor:
        """Raw pooled backbone features of any number of uint8 patches, in batches."""
        return torch.cat(
            [self.embed_with_features(patches[i : i + batch_size])[1] for i in range(0, len(patches), batch_size)]
        )

    def slide_adaptation(
        self, features: torch.Tensor | np.ndarray, *, mode: str | None = None
    ) -> SlideAdaptation | None:
        """The per-slide adaptation (`napari_stpredict.model.adaptation`) of a slide or
        section whose tissue patches have these raw ``features``.

        ``mode`` defaults to the model's ``retrieval.adaptation``. None when adaptation is
        off, when the model has no training statistics (no calibration) or for fewer
        than `MIN_PATCHES` patches.
        """
        mode = self.retrieval.adaptation if mode is None else mode
        if mode not in ADAPTATION_MODES:
            raise ValueError(f"adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {mode!r}")
        if mode == "none" or self.training_feature_stats is None:
            return None
        return estimate_adaptation(features, self.training_feature_stats, mode)

    @torch.inference_mode()
    def domain_distance(self, features: torch.Tensor) -> torch.Tensor | None:
        """Out-of-domain distance of each patch: mean cosine distance of its backbone
        features to the ``k`` most similar training images (None without calibration).

        Values above ``calibration["domain"]["threshold"]`` are rarer than that on
        sections held out of training (its quantile, e.g. 1 in 100).
        """
        if self.calibration is None:
            return None
        domain = self.calibration["domain"]
        ref = domain["reference"]
        sims = torch.nn.functional.normalize(features.float().to(self.device), dim=1) @ ref.T
        k = max(1, min(int(domain["k"]), ref.shape[0]))
        return 1.0 - torch.topk(sims, k, dim=1).values.mean(dim=1)

    def embed_many(
        self, patches: np.ndarray, *, batch_size: int = 128, adaptation: SlideAdaptation | None = None
    ) -> torch.Tensor:
        """Image embeddings of any number of uint8 patches, computed in batches (adapted
        when ``adaptation`` is given)."""
        if adaptation is not None:
            return self.embed_features(self.features_many(patches, batch_size=batch_size), adaptation=adaptation)
        return torch.cat([self.embed(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)])

    @torch.inference_mode()
    def predict_embeddings(
        self, embeddings: torch.Tensor, *, method: str = "retrieval", top_k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expression ``(B, n_genes)`` and confidence ``(B,)`` from image embeddings.

        Parameters
        ----------
        method : {"retrieval", "ridge"}
            Mean of the ``top_k`` most similar reference spots (the paper), or the ridge
            head fitted on the training embeddings. Confidence is always the retrieval
            similarity to the bank.
        top_k : int, optional
            Reference spots averaged (default: the model's ``retrieval.top_k``).
        """
        top_k = self.retrieval.top_k if top_k is None else top_k
        retrieved, confidence = retrieve(embeddings, self.bank, top_k=top_k)
        if method == "retrieval":
            return retrieved, confidence
        if method == "ridge":
            if self.ridge is None:
                raise ValueError(f"model {self.source}: has no ridge head; use method='retrieval'")
            return self.ridge(embeddings), confidence
        raise ValueError(f"method must be 'retrieval' or 'ridge', got {method!r}")

    def predict(self, patches, *, method: str = "retrieval", top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predict log-normalised expression of uint8 patches, each on its own (spatial
        context needs the slide: `napari_stpredict.inference.predict_slide`):
        ``(B, n_genes)``, confidence ``(B,)``."""
        pred, conf = self.predict_embeddings(self.embed(patches), method=method, top_k=top_k)
        return pred.cpu().numpy(), conf.cpu().numpy()

    def __repr__(self) -> str:
        return (
            f"<STModel {self.config.backbone}, {len(self.genes)} genes, bank {len(self.bank)} spots, "
            f"{self.io.patch_um:g} µm / {self.io.input_px} px, on {self.device}>"
        )


def load_model(path: str | Path | None = None, *, device: str | torch.device = "auto") -> STModel:
    """Load a checkpoint (default: the model shipped with the package).

    Raises
    ------
    CheckpointError
        When the file is missing or does not match (see `read_checkpoint`).
    """
    path = Path(path) if path is not None else default_model_path()
    data = read_checkpoint(path)
    config: ModelConfig = data["model_config"]
    config.backbone_weights = None  # the checkpoint holds every weight already
    network = CMRCNet(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise CheckpointError(f"checkpoint {path}: weights do not match a {config.backbone} CMRCNet: {first}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match a {config.backbone} CMRCNet "
            f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )
    bank = ReferenceBank(data["bank"]["embeddings"], data["bank"]["expression"])
    ridge = None
    if data.get("ridge"):
        r = data["ridge"]
        ridge = RidgeHead(r["weight"].float(), r["bias"].float(), float(r["alpha"]))
    calibration = data.get("calibration") or None
    if calibration is not None:
        n_features = network.backbone.num_features
        if calibration["domain"]["reference"].shape[1] != n_features:
            raise CheckpointError(
                f"checkpoint {path}: calibration.domain.reference has "
                f"{calibration['domain']['reference'].shape[1]} features per image, the backbone "
                f"gives {n_features}"
            )
    return STModel(
        network,
        data["io"],
        bank,
        ridge,
        provenance=data["provenance"],
        evaluation=data.get("evaluation"),
        calibration=calibration,
        retrieval=data["retrieval"],
        source=path.name,
        device=device,
    )

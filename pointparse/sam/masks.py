"""SAM's masks for the clicks of an image: images embedded in batches, every click of an image
decoded in one batched call.

:class:`SamMasker` holds a SAM model (:func:`pointparse.sam.weights.load_sam`) and its
device: :meth:`SamMasker.embed` runs the image encoder on several images at once (CUDA) or one
by one with torch's intra-op threads (CPU); :meth:`SamMasker.decode` sends all clicks of one
image through the prompt encoder and mask decoder as a batch of single-point prompts with
SAM's three-mask output, and returns a :class:`ClickMasks`.

Geometry: SAM resizes the long side to 1024 (``ResizeLongestSide``), pads to 1024x1024 and
predicts 256x256 low-resolution mask logits. :class:`ClickMasks` keeps those logits cropped to
the image's extent ([K, 3, h, w] with h, w = round(resized size / 4)) and upsamples only the
masks a rule picks, straight to the image size (one bilinear step instead of SAM's two, 1024 px
then the image size: the same masks within a fraction of a pixel, without ever holding
K x 3 x 1024² floats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .weights import load_sam

#: prompts per mask-decoder call: bounds the decoder's memory ([n, 256, 64, 64] per call)
DECODE_CHUNK = {"cpu": 32, "cuda": 256}


@dataclass
class ClickMasks:
    """SAM's answer for the K clicks of one image.

    ``ys``, ``xs``, ``cls`` int64 [K] (pixel row, column, class id); ``scores`` float32 [K, M]
    (SAM's predicted IoU of each of its M = 3 masks); ``logits`` float32 [K, M, h, w] (mask logits
    over the image, low resolution); ``size`` (H, W) of the image.
    """

    ys: np.ndarray
    xs: np.ndarray
    cls: np.ndarray
    scores: torch.Tensor
    logits: torch.Tensor
    size: tuple[int, int]

    @property
    def num_clicks(self) -> int:
        return len(self.cls)

    def areas(self, threshold: float = 0.0) -> torch.Tensor:
        """float [K, M]: share of the image each mask covers (logit > ``threshold``)."""
        if not self.num_clicks:
            return torch.zeros(0, self.scores.shape[1] if self.scores.ndim == 2 else 3)
        return (self.logits > threshold).float().mean(dim=(-2, -1))

    def sample(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        """float [K, M, J]: every mask's logit at pixels (ys[j], xs[j]) of the image, bilinear with
        the geometry of :meth:`upsample` (what the upsampled mask holds there)."""
        k, m, h, w = self.logits.shape
        H, W = self.size
        gx = (torch.as_tensor(xs, dtype=torch.float32) + 0.5) / W * 2 - 1
        gy = (torch.as_tensor(ys, dtype=torch.float32) + 0.5) / H * 2 - 1
        grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2).to(self.logits.device)
        out = F.grid_sample(self.logits.reshape(1, k * m, h, w), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.view(k, m, -1)

    def upsample(self, ks: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
        """float [n, H, W]: the logits of masks (ks[i], ms[i]) at the image's resolution."""
        low = self.logits[ks, ms]  # [n, h, w]
        if low.shape[0] == 0:
            return low.new_zeros((0, *self.size))
        return F.interpolate(low[:, None], size=self.size, mode="bilinear", align_corners=False)[:, 0]


def pick_device(device: str = "auto") -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SamMasker:
    """A SAM model ready to embed images and decode clicks (see the module docstring).

    ``sam_checkpoint``: None for the shipped MobileSAM, else a path (ViT-B/L/H or MobileSAM).
    ``model``: an already built ``Sam`` (tests pass a tiny random one).
    """

    def __init__(self, sam_checkpoint: str | None = None, device: str = "auto", model=None):
        from segment_anything.utils.transforms import ResizeLongestSide  # the extra: checked by load_sam

        if model is None:
            model, self.path, self.arch = load_sam(sam_checkpoint)
        else:
            self.path, self.arch = None, "given"
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(self.model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        self.chunk = DECODE_CHUNK.get(self.device.type, 32)

    # --- the image encoder -----------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> float [3, S, S] (resized as SamPredictor does, normalised, padded)."""
        x = torch.as_tensor(self.transform.apply_image(np.ascontiguousarray(image)))
        x = x.permute(2, 0, 1).contiguous().float()
        return self.model.preprocess(x[None].to(self.device))[0]

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] prepared images -> image embeddings [B, 256, 64, 64]."""
        return self.model.image_encoder(batch.to(self.device))

    # --- the prompt encoder and mask decoder -----------------------------------------------------

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, size: tuple[int, int], ys: np.ndarray, xs: np.ndarray,
               cls: np.ndarray) -> ClickMasks:
        """All K clicks of one image (``embedding`` [256, 64, 64], image ``size`` (H, W)) as K
        single-point positive prompts, SAM's multimask output."""
        H, W = size
        rh, rw = self.transform.get_preprocess_shape(H, W, self.img_size)
        decoder = self.model.mask_decoder
        h, w = max(1, round(rh / 4)), max(1, round(rw / 4))  # low-res logits: 1/4 of the padded input
        k = len(cls)
        if k == 0:
            return ClickMasks(ys, xs, cls, torch.zeros(0, 3), torch.zeros(0, 3, h, w), (H, W))
        coords = np.stack([xs, ys], axis=1).astype(np.float32)[:, None, :]  # [K, 1, 2] (x, y)
        coords = torch.as_tensor(self.transform.apply_coords(coords, (H, W)), device=self.device)
        labels = torch.ones(k, 1, dtype=torch.int64, device=self.device)
        pe = self.model.prompt_encoder.get_dense_pe()
        emb = embedding[None].to(self.device)
        logits, scores = [], []
        for s in range(0, k, self.chunk):
            sparse, dense = self.model.prompt_encoder(points=(coords[s:s + self.chunk], labels[s:s + self.chunk]),
                                                      boxes=None, masks=None)
            low, iou = decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                               dense_prompt_embeddings=dense, multimask_output=True)
            logits.append(low[:, :, :h, :w].float().cpu())
            scores.append(iou.float().cpu())
        return ClickMasks(ys, xs, cls, torch.cat(scores), torch.cat(logits).contiguous(), (H, W))

"""Response bodies of the HTTP service (pydantic models; they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AssessResponse(BaseModel):
    """The quality assessment of one uploaded image."""

    request_id: str = Field(
        description="This request's id (a uuid4), also in the X-Request-ID header and the audit log."
    )
    id: str = Field(description="The upload's file name without its folder and extension ('upload' if none).")
    predicted_jaccard: float = Field(description="Jaccard index of the segmentation, as predicted by g.")
    decision: Literal["pass", "refer"] = Field(
        description="'refer' (to a human) when predicted_jaccard is below threshold, else 'pass'."
    )
    reason: str = Field(
        description="Why: 'ok' for a pass, else the failed checks, most severe first, joined by '; ' "
        "('not finite', 'out-of-distribution', 'low predicted quality')."
    )
    jaccard_lower: float | None = Field(
        description="A lower bound of the true Jaccard index at the model's stated confidence, or null "
        "when the model has none."
    )
    threshold: float = Field(description="The model's referral threshold on the predicted Jaccard index.")
    mean_uncertainty: float = Field(description="Mean of the per-pixel uncertainty map z.")
    method: str = Field(description="Uncertainty method of the model (sets the scale of z).")
    width: int = Field(description="Image width in pixels, after EXIF rotation.")
    height: int = Field(description="Image height in pixels, after EXIF rotation.")
    mask_png: str | None = Field(
        default=None,
        description="With include_mask=true: the predicted mask as a base64 8-bit grey PNG of "
        "width x height, lesion 255, background 0.",
    )
    uncertainty_png: str | None = Field(
        default=None,
        description="With include_uncertainty=true: the uncertainty map as a base64 PNG of width x height. "
        "uncertainty_format=grey (default): 8-bit grey, z = value / 255 * uncertainty_scale. "
        "uncertainty_format=heatmap: RGB 'magma' colour map over [0, uncertainty_scale], for display.",
    )
    uncertainty_scale: float | None = Field(
        default=None,
        description="With include_uncertainty=true: the uncertainty that PNG value 255 (or the top colour) "
        "stands for: the largest uncertainty the model showed on its training images, the same for every "
        "image; larger values saturate.",
    )


class ModelInfo(BaseModel):
    """The served model: the bundle's own metadata, plus the service limits."""

    model_config = ConfigDict(extra="allow")

    method: str = Field(description="Uncertainty method of f.")
    threshold: float = Field(description="Referral threshold on the predicted Jaccard index.")
    image_size: int = Field(description="Side of the square input of the networks (uploads are resized).")
    service: dict[str, Any] = Field(
        description="Service settings: max_upload_bytes, max_pixels, pixel_budget, the timeouts, "
        "api_key_required, audit_log, formats."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorResponse(BaseModel):
    """Every error answer: one human-readable message."""

    detail: str = Field(description="What was wrong with the request.")

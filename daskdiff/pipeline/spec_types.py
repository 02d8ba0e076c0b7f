"""Pipeline layer, job spec: the value types its sections are made of (a strict, frozen section;
a whole number as YAML may write it), shared by :mod:`~daskdiff.pipeline.spec` and
:mod:`~daskdiff.pipeline.spec_cluster`, and the self-contained ``analysis.stimulus`` section."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..core.stimulus import FIELD_OF_VIEW, RF_AREA


def whole_number(value: Any) -> Any:
    """A float that is a whole number (``1.0e+9``, as YAML reads it) as the int it is; any other
    value as given, for strict validation to refuse (``"5"``, ``true``, ``2.5``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(whole_number)]
"""An integer of the spec: an int, or a float that is a whole number; never a string or a bool."""
PositiveWhole = Annotated[Whole, Field(gt=0)]


class Strict(BaseModel):
    """A spec section: unknown keys refused, values frozen, and types strict: ``repeats: "5"``,
    ``repeats: true`` or ``per_unit: "yes"`` are refused, not coerced (an integer is still a
    valid float: ``state_length: 1``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StimulusSection(Strict):
    """``analysis.stimulus``: a movie's own stimulus differentiation, as Mayner et al. (2022)
    published it (:func:`daskdiff.stimulus_differentiation`), computed for every movie of a job
    from its frames as decoded, at their native resolution; other sets get NaN. Not in the spec's
    digest: nothing cached depends on it (it is computed afresh by every run)."""

    enabled: bool = True
    rf_area: float = Field(RF_AREA, gt=0)
    """Receptive field area, deg^2: the blur's half width at half maximum is its radius."""
    field_of_view: list[Annotated[float, Field(gt=0)]] = Field(list(FIELD_OF_VIEW), min_length=2, max_length=2)
    """Degrees spanned by the frames' rows and columns, ``[vertical, horizontal]`` (the OpenScope screen's: [95, 120])."""
    state_length: float = Field(1.0, gt=0)
    """Seconds per window; a movie whose ``state_length * fps`` is no whole number of frames, or
    that holds fewer than 2 windows, gets NaN and a line saying why."""

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~daskdiff.core.stimulus.stimulus_differentiation`."""
        return {"rf_area": self.rf_area, "field_of_view": tuple(self.field_of_view), "state_length": self.state_length}

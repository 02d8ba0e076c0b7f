"""Pipeline layer, job spec: the value types its sections are made of (a strict, frozen section;
a whole number as YAML may write it), shared by :mod:`~daskdiff.pipeline.spec` and
:mod:`~daskdiff.pipeline.spec_cluster`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


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

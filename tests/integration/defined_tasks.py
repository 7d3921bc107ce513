"""Defined tasks of the integration tests: the workers import this module (`QUORUM_IMPORTS=
tests.integration.defined_tasks`), as a service's workers import its own. Every template
takes `sim`, the simulator directive that scripts the run's answers and votes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, field_validator

from quorum import SingleShotValidationConfig, define


class Order(BaseModel):
    """A purchase with a validator of its own: what an ad-hoc submit cannot run."""

    product: str
    quantity: int
    note: str = ""

    @field_validator("quantity")
    @classmethod
    def at_least_ten(cls, quantity: int) -> int:
        if quantity < 10:
            raise ValueError("quantity must be at least 10 (wholesale orders only)")
        return quantity


class Purchase(BaseModel):
    """A purchase without validators of its own."""

    product: str
    quantity: int


def not_pears(purchase: Purchase) -> Purchase:
    """A Python check: pears are out of stock. It also normalises the product's case."""
    if purchase.product.lower() == "pears":
        raise ValueError("pears are out of stock: name another product")
    return purchase.model_copy(update={"product": purchase.product.lower()})


ONE_VOTE = SingleShotValidationConfig(issues=["The output names a product"])
TEMPLATE = "Extract the purchase from: {{ message }} {{ sim }}"

model_check = define("it_model_check", template=TEMPLATE, response_model=Order, config=ONE_VOTE)
python_check = define(
    "it_python_check",
    template=TEMPLATE,
    response_model=Purchase,
    config=ONE_VOTE,
    validators=[not_pears],
)
expression_check = define(
    "it_expression_check",
    template=TEMPLATE,
    response_model=Purchase,
    config=ONE_VOTE,
    checks=[{"expr": "output.quantity <= kwargs.limit", "message": "quantity over the limit"}],
)
vote_free = define("it_vote_free", template=TEMPLATE, response_model=Purchase)
choice = define(
    "it_choice",
    template="Refund or exchange? {{ message }} {{ sim }}",
    response_model=Literal["refund", "exchange"],
)
tags = define(
    "it_tags",
    template="Tags of: {{ message }} {{ sim }}",
    response_model=list[str],
    checks=[{"expr": "output | length >= 2", "message": "give at least two tags"}],
)
capped = define(
    "it_capped",
    template=TEMPLATE,
    response_model=Purchase,
    max_output_tokens=12,
    temperature=0.0,
    system="You are terse.",
)

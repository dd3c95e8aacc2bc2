"""A small versioned registry of scoring models and prompts.

Selection is deterministic per request: a stable BLAKE2b draw over the seed and
the request id sends a canary share of requests to the previous model and
prompt, and a tenant may pin either version through configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from app.workflows.langgraph._reference import stable_fraction

__all__ = (
    "DEFAULT_REGISTRY",
    "ModelRegistry",
    "ModelVersion",
    "PromptVersion",
    "VersionPin",
    "VersionSelection",
)

SelectionRoute = Literal["default", "canary", "pinned"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersion:
    """A registered model.

    Attributes:
        name: Registry name, e.g. ``risk-llm-v2``.
        description: What the version is.
    """

    name: str
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptVersion:
    """A registered prompt template.

    Attributes:
        name: Prompt family, e.g. ``risk_scoring``.
        version: Version within the family, e.g. ``v3``.
        template: ``str.format`` template over the transaction's fields.
    """

    name: str
    version: str
    template: str

    @property
    def id(self) -> str:
        """The registry id, ``<name>/<version>``."""
        return f"{self.name}/{self.version}"

    def render(self, fields: Mapping[str, object]) -> str:
        """Fill the template.

        Args:
            fields: Values for the template's placeholders.

        Returns:
            The rendered prompt.

        Raises:
            KeyError: If a placeholder has no value.
        """
        return self.template.format_map(fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionSelection:
    """The model and prompt chosen for one request.

    Attributes:
        model: The model to call.
        prompt: The prompt to render.
        route: Why: ``default``, ``canary`` or ``pinned`` (tenant configuration).
    """

    model: ModelVersion
    prompt: PromptVersion
    route: SelectionRoute


class VersionPin(BaseModel):
    """A tenant's pinned versions; an unset field follows the default.

    Attributes:
        model_version: Registry name of the pinned model.
        prompt_version: Registry id of the pinned prompt.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str | None = None
    prompt_version: str | None = None


_TEMPLATE_V3 = """\
You are a payment risk analyst. Score the transaction below from 0 (no risk) to 1
(certain fraud) and explain the main factors. Never repeat personal data.

Amount: {amount} {currency}
Country: {country}
Merchant category: {merchant_category}
Account age (days): {account_age_days}
Prior chargebacks: {prior_chargebacks}
Channel: {channel}
Applicant note: {description}

Answer as JSON: {{"risk_score": <float>, "confidence": <float>, "rationale": <string>}}
"""

_TEMPLATE_V2 = """\
Rate the fraud risk (0-1) of this payment and say why.
{amount} {currency}, {country}, {merchant_category}, account {account_age_days} days,
{prior_chargebacks} chargebacks, via {channel}. Note: {description}
"""

_DEFAULT_MODELS = (
    ModelVersion(name="risk-llm-v2", description="Current production scoring model."),
    ModelVersion(name="risk-llm-v1", description="Previous model, kept for canary comparison."),
    ModelVersion(name="risk-llm-mini-v1", description="Small, cheap model for low-value tiers."),
)
_DEFAULT_PROMPTS = (
    PromptVersion(name="risk_scoring", version="v3", template=_TEMPLATE_V3),
    PromptVersion(name="risk_scoring", version="v2", template=_TEMPLATE_V2),
)


class ModelRegistry:
    """Registered model and prompt versions, and the per-request selection rule.

    Args:
        models: The registered models.
        prompts: The registered prompts.
        default_model: Name of the model most requests use.
        default_prompt: Id of the prompt most requests use.
        canary_model: Name of the model the canary share uses.
        canary_prompt: Id of the prompt the canary share uses.

    Raises:
        ValueError: If a name is registered twice or a default is not registered.
    """

    __slots__ = (
        "_canary_model",
        "_canary_prompt",
        "_default_model",
        "_default_prompt",
        "_models",
        "_prompts",
    )

    def __init__(
        self,
        *,
        models: Iterable[ModelVersion] = _DEFAULT_MODELS,
        prompts: Iterable[PromptVersion] = _DEFAULT_PROMPTS,
        default_model: str = "risk-llm-v2",
        default_prompt: str = "risk_scoring/v3",
        canary_model: str = "risk-llm-v1",
        canary_prompt: str = "risk_scoring/v2",
    ) -> None:
        self._models = _index(models, key=lambda m: m.name, kind="model")
        self._prompts = _index(prompts, key=lambda p: p.id, kind="prompt")
        self._default_model = self.model(default_model)
        self._default_prompt = self.prompt(default_prompt)
        self._canary_model = self.model(canary_model)
        self._canary_prompt = self.prompt(canary_prompt)

    @property
    def models(self) -> Mapping[str, ModelVersion]:
        """Registered models by name (read-only)."""
        return self._models

    @property
    def prompts(self) -> Mapping[str, PromptVersion]:
        """Registered prompts by id (read-only)."""
        return self._prompts

    def model(self, name: str) -> ModelVersion:
        """Look a model up.

        Args:
            name: Registry name.

        Returns:
            The model.

        Raises:
            ValueError: If no such model is registered.
        """
        try:
            return self._models[name]
        except KeyError:
            raise ValueError(f"unknown model version {name!r}") from None

    def prompt(self, prompt_id: str) -> PromptVersion:
        """Look a prompt up.

        Args:
            prompt_id: Registry id, ``<name>/<version>``.

        Returns:
            The prompt.

        Raises:
            ValueError: If no such prompt is registered.
        """
        try:
            return self._prompts[prompt_id]
        except KeyError:
            raise ValueError(f"unknown prompt version {prompt_id!r}") from None

    def validate_pins(self, pins: Mapping[str, VersionPin]) -> None:
        """Check that every pinned version is registered.

        Args:
            pins: Pinned versions by tenant id.

        Raises:
            ValueError: Naming the tenant and the unknown version.
        """
        for tenant_id, pin in pins.items():
            try:
                if pin.model_version is not None:
                    self.model(pin.model_version)
                if pin.prompt_version is not None:
                    self.prompt(pin.prompt_version)
            except ValueError as exc:
                raise ValueError(f"tenant {tenant_id!r}: {exc}") from None

    def select(
        self,
        request_id: str,
        tenant_id: str,
        *,
        canary_share: float,
        seed: int,
        pins: Mapping[str, VersionPin],
    ) -> VersionSelection:
        """Choose the model and prompt for a request, deterministically.

        A pinned tenant never takes part in the canary: its unpinned versions
        are the defaults. Otherwise a request whose BLAKE2b draw over
        ``(seed, request_id)`` falls below ``canary_share`` gets the canary
        model and prompt.

        Args:
            request_id: The request.
            tenant_id: Its tenant.
            canary_share: Fraction of requests routed to the canary, in ``[0, 1]``.
            seed: Seed of the draw.
            pins: Pinned versions by tenant id (see :meth:`validate_pins`).

        Returns:
            The selection and the route that produced it.

        Raises:
            ValueError: If a pinned version is not registered.
        """
        pin = pins.get(tenant_id)
        if pin is not None:
            model = self._default_model
            prompt = self._default_prompt
            if pin.model_version is not None:
                model = self.model(pin.model_version)
            if pin.prompt_version is not None:
                prompt = self.prompt(pin.prompt_version)
            return VersionSelection(model=model, prompt=prompt, route="pinned")
        if canary_share > 0.0 and stable_fraction("canary", seed, request_id) < canary_share:
            return VersionSelection(
                model=self._canary_model, prompt=self._canary_prompt, route="canary"
            )
        return VersionSelection(
            model=self._default_model, prompt=self._default_prompt, route="default"
        )


def _index(items: Iterable[_T], *, key: Callable[[_T], str], kind: str) -> Mapping[str, _T]:
    index: dict[str, _T] = {}
    for item in items:
        name = key(item)
        if name in index:
            raise ValueError(f"{kind} {name!r} registered twice")
        index[name] = item
    return MappingProxyType(index)


DEFAULT_REGISTRY = ModelRegistry()
"""The registry of the shipped models and prompts."""

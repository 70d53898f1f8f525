"""Registry of pruning rules, keyed by layer class and found through the MRO.

A rule registered for `keras.layers.Conv2D` also serves a user's subclass of
`Conv2D`, unless the subclass has its own rule.
"""

from __future__ import annotations

from collections.abc import Callable

from kerasprune.rules.base import Rule

_RULES: dict[type, Rule] = {}


def register_rule(layer_class: type, rule: Rule | None = None):
    """Register `rule` for `layer_class` (and its subclasses).

    Usable directly, `register_rule(MyLayer, ChannelParams(("scale",)))`, or as a
    class decorator on a rule class, `@register_rule(MyLayer)`, which registers
    an instance made with no arguments.

    Args:
        layer_class: A Keras layer (or operation) class.
        rule: A `Rule` instance. Omit it to use the decorator form.

    Returns:
        The rule (or, as a decorator, the rule class).

    Raises:
        TypeError: `layer_class` is not a class, or `rule` does not keep the rule
            contract (not a `Rule`, or no `analyze`); the message names what is missing.

    Example:
        >>> kerasprune.register_rule(MyScale, kerasprune.ChannelParams(("scale",), config_key="channels"))
    """
    if not isinstance(layer_class, type):
        raise TypeError(f"register_rule expects a class. Received: {layer_class!r}")
    if rule is None:

        def decorator(rule_cls: type) -> type:
            register_rule(layer_class, rule_cls())
            return rule_cls

        return decorator
    check_rule(rule)
    _RULES[layer_class] = rule
    return rule


def check_rule(rule) -> None:
    """Raise `TypeError` naming what is missing when `rule` does not keep the rule contract."""
    if not isinstance(rule, Rule):
        raise TypeError(
            f"register_rule expects an instance of kerasprune.Rule (or a subclass such as ChannelParams, "
            f"Elementwise, CouplerRule). Received: {rule!r}"
        )
    if type(rule).analyze is Rule.analyze:
        raise TypeError(
            f"Rule {type(rule).__name__} does not implement analyze(view, g), the one method every rule "
            "needs (see docs/rules.md)"
        )
    for name in ("analyze", "rebuild_config", "macs"):
        if not callable(getattr(rule, name, None)):
            raise TypeError(f"Rule {type(rule).__name__}.{name} must be a method. Received: {getattr(rule, name)!r}")


def unregister_rule(layer_class: type) -> None:
    """Remove the rule registered for exactly `layer_class` (no-op if none).

    Args:
        layer_class: The class given to `register_rule` (subclasses keep their own rules).

    Returns:
        None.

    Raises:
        Nothing: unregistering a class without a rule does nothing.

    Example:
        >>> kerasprune.unregister_rule(MyScale)  # MyScale is a barrier again
    """
    _RULES.pop(layer_class, None)


def find_rule(layer) -> Rule | None:
    """The rule for `layer`'s class, looked up through the class hierarchy."""
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return None


def registered() -> dict[type, Rule]:
    """A copy of the registry (class -> rule)."""
    return dict(_RULES)


def register_many(classes, rule: Rule) -> None:
    for cls in classes:
        if cls is not None:
            register_rule(cls, rule)


RuleFactory = Callable[[], Rule]

"""Config checks that speak to people: each failure is one sentence naming the field and what it takes.

    require(ok, "config.model.dropout", value, "in [0, 1)")
    -> ValueError("config.model.dropout must be in [0, 1), got 1.5.")

`gm.config` runs these on every field when a run starts, so a bad value stops it before the dataset is
batched or anything is compiled; public functions run them on their arguments.
"""
import numbers

import jax
import numpy as np


def require(ok, field, value, expectation):
    """Raise ValueError('FIELD must be EXPECTATION, got VALUE.') unless `ok`."""
    if not ok:
        raise ValueError(f"{field} must be {expectation}, got {value!r}.")


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, field):
    require(is_int(value) and value > 0, field, value, "a positive integer")
    return int(value)


def nonnegative_int(value, field):
    require(is_int(value) and value >= 0, field, value, "an integer >= 0")
    return int(value)


def number_in(value, field, low, high, *, low_open=False, high_open=True):
    """`value` as a float in the interval from `low` to `high` (None: unbounded); by default [low, high)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    left, right = ("(" if low_open else "[") if low is not None else "(", (")" if high_open else "]")
    require(ok, field, value, f"a number in {left}{'-inf' if low is None else low}, "
                              f"{'inf' if high is None else high}{right}")
    return float(value)


def one_of(value, field, choices):
    if value not in choices:
        raise ValueError(f"Unknown {field} {value!r}; use one of {tuple(choices)}.")
    return value


DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes a network may run in


def is_traced(x):
    """True inside jit / grad / vmap, where values are not known and only shapes can be checked."""
    return isinstance(x, jax.core.Tracer)


def values_in(x, name, low, high):
    """For concrete arrays (eager calls, as in a notebook), raise one sentence when `x` holds values
    outside [low, high] or non-finite ones; traced arrays pass (their values are not known yet)."""
    if is_traced(x):
        return
    a = np.asarray(x)
    if a.size == 0:
        return
    if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        raise ValueError(f"{name} must be a numeric array, got dtype {a.dtype}.")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or a.min() < low or a.max() > high:
        finite = a[np.isfinite(a)]
        seen = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "none finite"
        extra = " and non-finite values" if finite.size < a.size else ""
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got values in {seen}{extra}.")


def shape_is(x, name, expected, what):
    """Raise one sentence unless the shape of array `x` is `expected`; `what` says where that comes from."""
    same_shape(np.shape(x), expected, f"{name} must have shape", what)


def same_shape(actual, expected, subject, what):
    """Raise 'SUBJECT EXPECTED (WHAT), got ACTUAL.' unless the two shapes are equal."""
    if tuple(actual) != tuple(expected):
        raise ValueError(f"{subject} {tuple(expected)} ({what}), got {tuple(actual)}.")

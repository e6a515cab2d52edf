"""Registry behaviour and its error messages (issue 3, item 3)."""
import pytest
import torch

import polyheads
from polyheads import create_head, get_head_class, is_head, list_heads, register_head
from polyheads.heads import Head
from polyheads.registry import _ALIASES, _HEADS

DESIGN_NAMES = ["standard", "cosine", "normface"]


@pytest.fixture
def scratch_registry():
    """Snapshot the registry so a test's registrations do not leak into other tests."""
    heads, aliases = dict(_HEADS), dict(_ALIASES)
    yield
    _HEADS.clear(), _HEADS.update(heads)
    _ALIASES.clear(), _ALIASES.update(aliases)


def test_builtin_names_registered_and_sorted():
    names = list_heads()
    assert names == sorted(names)
    for name in DESIGN_NAMES:
        assert name in names and is_head(name)


def test_list_heads_glob_and_aliases():
    assert list_heads("cos*") == [n for n in list_heads() if n.startswith("cos")]
    assert "cosine" in list_heads(["norm*", "cos*"])
    assert "softmax" not in list_heads()
    assert "softmax" in list_heads(include_aliases=True)
    assert get_head_class("softmax") is get_head_class("standard")


def test_create_head_builds_the_registered_class():
    head = create_head("cosine", 16, 5, dim=8)
    assert type(head).__name__ == "CosineHead"
    assert (head.in_features, head.num_classes, head.dim, head.geometry) == (16, 5, 8, "spherical")
    assert head(torch.randn(3, 16)).shape == (3, 5)


def test_unknown_name_lists_registered_and_closest():
    with pytest.raises(ValueError) as info:
        create_head("cosin", 16, 5)
    message = str(info.value)
    assert "'cosin'" in message and "Closest matches: ['cosine'" in message
    for name in DESIGN_NAMES:
        assert name in message
    assert not is_head("cosin") and not is_head(3)


def test_bad_head_kwargs_raise_type_error_listing_accepted():
    with pytest.raises(TypeError) as info:
        create_head("cosine", 16, 5, margin=0.5)
    assert "margin" in str(info.value) and "init_tau" in str(info.value)


@pytest.mark.parametrize("in_features,num_classes", [(0, 5), (16, 0), (16.0, 5), (True, 5)])
def test_bad_sizes(in_features, num_classes):
    with pytest.raises((TypeError, ValueError)) as info:
        create_head("standard", in_features, num_classes)
    assert "in_features" in str(info.value) or "num_classes" in str(info.value)


def test_register_taken_name_raises_unless_override(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        @register_head("cosine")
        class Another(Head):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_head("fresh_name", aliases=("softmax",))(Head)

    @register_head("cosine", override=True)
    class Replacement(polyheads.heads.StandardHead):
        pass

    assert get_head_class("cosine") is Replacement
    assert isinstance(create_head("cosine", 4, 3), Replacement)


def test_register_new_head_with_alias(scratch_registry):
    @register_head("my_head", aliases=("mine",))
    class MyHead(polyheads.heads.StandardHead):
        pass

    assert MyHead.head_name == "my_head"
    assert "my_head" in list_heads() and "mine" not in list_heads()
    assert isinstance(create_head("mine", 4, 3), MyHead)


@pytest.mark.parametrize("bad", ["", " padded", 3])
def test_register_rejects_bad_names(bad):
    with pytest.raises(ValueError):
        register_head(bad)

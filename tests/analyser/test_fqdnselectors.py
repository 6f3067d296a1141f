"""fqdnselectors: Cilium's matchName/matchPattern matching, and the names a workload used → the
fewest selectors that allow no more than they justify."""

from __future__ import annotations

from analyser.fqdnselectors import FqdnSelector, selectors_for, valid_name, valid_pattern


def test_match_name_compares_without_case_and_final_dot() -> None:
    selector = FqdnSelector("api.example.com")
    assert selector.matches("API.example.com.")
    assert not selector.matches("xapi.example.com")
    assert not selector.matches("api.example.com.evil")


def test_a_star_stands_for_one_label_only() -> None:
    pattern = FqdnSelector("*.cdn.example", pattern=True)
    assert pattern.matches("a1.cdn.example")
    assert not pattern.matches("cdn.example")
    assert not pattern.matches("x.a1.cdn.example")
    assert not pattern.matches("a1.cdn.example.evil")
    assert FqdnSelector("**.cdn.example", pattern=True).matches("x.a1.cdn.example")
    assert FqdnSelector("*", pattern=True).matches("any.name.at.all")


def test_names_become_match_names_until_a_suffix_has_more_than_the_threshold() -> None:
    shards = [f"s{n}.cdn.example" for n in range(4)]
    assert selectors_for([*shards, "api.example.com"], max_per_suffix=4) == (
        FqdnSelector("api.example.com"),
        FqdnSelector("s0.cdn.example"),
        FqdnSelector("s1.cdn.example"),
        FqdnSelector("s2.cdn.example"),
        FqdnSelector("s3.cdn.example"),
    )
    folded = selectors_for([*shards, "s4.cdn.example", "api.example.com"], max_per_suffix=4)
    assert folded == (
        FqdnSelector("api.example.com"),
        FqdnSelector("*.cdn.example", pattern=True, folded=5),
    )


def test_a_pattern_never_covers_a_public_suffix_alone() -> None:
    # Under a one-label suffix (a top-level domain) names stay names, however many.
    names = [f"site{n}.com" for n in range(20)]
    assert all(not s.pattern for s in selectors_for(names, max_per_suffix=2))


def test_only_names_the_crd_admits_are_written() -> None:
    assert valid_name("a-b_c.example.")
    assert not valid_name("bad name.example")
    assert not valid_name("x" * 256)
    assert valid_pattern("*.example")
    assert selectors_for(["bad name.example", "ok.example"]) == (FqdnSelector("ok.example"),)


def test_an_example_name_is_one_the_selector_matches() -> None:
    for selector in (
        FqdnSelector("API.example.com."),
        FqdnSelector("*.cdn.example", pattern=True),
        FqdnSelector("**.cdn.example", pattern=True),
        FqdnSelector("*", pattern=True),
    ):
        assert selector.matches(selector.example()), selector

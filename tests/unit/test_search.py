"""Chef node search, pure: the index document, the query language, matching, paging, partial."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.search import (
    IndexCache,
    QueryError,
    flatten_node,
    index_document,
    parse_filter_result,
    parse_query,
    parse_sort,
    partial,
    search,
)

# --------------------------------------------------------------------------- fixture


def node(name: str, **parts) -> dict:
    return {
        "name": name,
        "chef_environment": parts.pop("env", "_default"),
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": parts.pop("run_list", []),
        "automatic": parts.pop("automatic", {}),
        "normal": parts.pop("normal", {}),
        "default": parts.pop("default", {}),
        "override": parts.pop("override", {}),
    }


NODES = [
    node(
        "web1",
        env="prod",
        run_list=["role[web]", "recipe[nginx::default]"],
        automatic={
            "platform": "ubuntu",
            "platform_version": "22.04",
            "kernel": {"release": "5.15.0-91", "machine": "x86_64"},
            "ipaddress": "10.0.0.11",
            "cpu": {"total": 4},
        },
        normal={"tags": ["blue", "canary"], "app": {"version": "1.2.3", "enabled": True}},
        default={"port": 80},
        override={"port": 8080},
    ),
    node(
        "web2",
        env="prod",
        run_list=["role[web]", "recipe[nginx]"],
        automatic={
            "platform": "ubuntu",
            "platform_version": "20.04",
            "kernel": {"release": "5.4.0", "machine": "x86_64"},
            "ipaddress": "10.0.0.12",
            "cpu": {"total": 8},
        },
        normal={"tags": ["blue"], "app": {"version": "1.3.0", "enabled": False}},
        default={"port": 80},
    ),
    node(
        "db1",
        env="prod",
        run_list=["role[db]", "recipe[postgresql::server]"],
        automatic={
            "platform": "centos",
            "platform_version": "7",
            "kernel": {"release": "3.10.0", "machine": "x86_64"},
            "ipaddress": "10.0.1.5",
            "cpu": {"total": 16},
        },
        normal={"tags": ["green"], "postgresql": {"version": 13}},
    ),
    node(
        "db2",
        env="staging",
        run_list=["role[db]"],
        automatic={
            "platform": "centos",
            "platform_version": "8",
            "kernel": {"release": "4.18.0", "machine": "aarch64"},
            "ipaddress": "10.0.1.6",
            "cpu": {"total": 32},
        },
        normal={"postgresql": {"version": 14}},
    ),
    node(
        "cache-1",
        env="staging",
        run_list=["role[cache]", "recipe[redis]"],
        automatic={"platform": "debian", "ipaddress": "192.168.1.10", "cpu": {"total": 2}},
        normal={"tags": ["red", "canary"], "description": "in memory store"},
    ),
    node(
        "WEB3",
        env="dev",
        run_list=["role[web]"],
        automatic={"platform": "Ubuntu", "ipaddress": "10.0.0.13", "cpu": {"total": 4}},
    ),
    node(
        "lb1",
        env="prod",
        automatic={
            "roles": ["lb"],
            "recipes": ["haproxy", "haproxy::default"],
            "ipaddress": "10.0.0.1",
            "cpu": {"total": 1},
            "url": "http://lb1:8080/a",
            "path": "/var/www",
        },
    ),
    {"name": "bare"},
]
ALL = {n["name"] for n in NODES}


def names(query: str, nodes: list[dict] = NODES) -> set[str]:
    total, rows = search(nodes, query)
    assert total == len(rows)
    return {r["name"] for r in rows}


# --------------------------------------------------------------------------- index document


def test_precedence_default_normal_override_automatic():
    n = node(
        "p",
        default={"a": "default", "b": "default", "c": "default", "d": "default"},
        normal={"b": "normal", "c": "normal", "d": "normal"},
        override={"c": "override", "d": "override"},
        automatic={"d": "automatic"},
    )
    f = flatten_node(n)
    assert (f["a"], f["b"], f["c"], f["d"]) == (
        ["default"],
        ["normal"],
        ["override"],
        ["automatic"],
    )


def test_hashes_deep_merge_and_arrays_are_replaced():
    n = node(
        "p",
        default={"svc": {"port": 80, "hosts": ["a", "b"], "opts": {"x": 1, "y": 2}}},
        override={"svc": {"hosts": ["c"], "opts": {"y": 3}}},
    )
    doc = index_document(n)
    assert doc["svc"] == {"port": 80, "hosts": ["c"], "opts": {"x": 1, "y": 3}}
    assert n["default"]["svc"]["opts"] == {"x": 1, "y": 2}  # inputs are not changed
    f = flatten_node(n)
    assert f["svc_hosts"] == ["c"] and f["svc_opts_y"] == ["3"] and f["svc_opts_x"] == ["1"]


def test_nested_keys_flatten_like_chef_expander():
    n = node("p", normal={"a": {"b": {"c": "leaf"}}})
    f = flatten_node(n)
    assert f["a_b_c"] == ["leaf"]  # the whole path
    assert f["c"] == ["leaf"]  # the leaf key on its own
    assert f["a"] == ["b"] and f["a_b"] == ["c"]  # each key is a value of its parent path
    assert f["b"] == ["c"]  # ... and of its parent's own key


def test_arrays_give_several_values_and_hashes_inside_arrays_expand():
    n = node("p", normal={"fs": [{"mount": "/"}, {"mount": "/var"}], "ports": [80, 443, 80]})
    f = flatten_node(n)
    assert f["ports"] == ["80", "443"]  # duplicates dropped
    assert f["fs_mount"] == ["/", "/var"] and f["mount"] == ["/", "/var"]
    assert f["fs"] == ["mount"]


def test_scalars_are_indexed_as_chef_writes_them():
    n = node("p", normal={"t": True, "f": False, "i": 42, "z": None, "x": 1.5, "s": "str"})
    f = flatten_node(n)
    assert (f["t"], f["f"], f["i"], f["z"], f["x"], f["s"]) == (
        ["true"],
        ["false"],
        ["42"],
        [""],
        ["1.5"],
        ["str"],
    )


def test_special_fields():
    f = flatten_node(NODES[0])
    assert f["name"] == ["web1"]
    assert f["chef_environment"] == ["prod"]
    assert f["chef_type"] == ["node"]
    assert f["run_list"] == ["role[web]", "recipe[nginx::default]"]
    assert f["role"] == ["web"] and f["roles"] == ["web"]
    assert f["recipe"] == ["nginx::default"] and f["recipes"] == ["nginx::default"]
    assert f["tags"] == ["blue", "canary"]
    assert f["X_CHEF_type_CHEF_X"] == ["node"]
    lb = flatten_node(NODES[6])
    assert lb["roles"] == ["lb"] and "role" not in lb  # an empty run list gives no value
    assert lb["recipes"] == ["haproxy", "haproxy::default"]


def test_top_level_keys_override_attributes_of_the_same_name():
    n = node("real", env="prod", run_list=["role[x]"], normal={"name": "fake", "run_list": ["y"]})
    f = flatten_node(n)
    assert f["name"] == ["real"] and f["run_list"] == ["role[x]"]
    assert flatten_node({"name": "m"})["chef_environment"] == ["_default"]


def test_deep_nesting_does_not_hit_the_recursion_limit():
    def nested(leaf: str) -> dict:
        deep: dict = {"leaf": leaf}
        for _ in range(3000):
            deep = {"k": deep}
        return deep

    n = node("deep", default=nested("low"), normal=nested("high"))
    assert flatten_node(n)["leaf"] == ["high"]
    assert names("leaf:high", [n]) == {"deep"}


# --------------------------------------------------------------------------- matching table

TABLE = [
    # everything
    ("*:*", ALL),
    ("*", ALL),
    # field:value, special fields
    ("name:web1", {"web1"}),
    ("chef_environment:prod", {"web1", "web2", "db1", "lb1"}),
    ("chef_environment:_default", {"bare"}),
    ("role:web", {"web1", "web2", "WEB3"}),
    ("roles:web", {"web1", "web2", "WEB3"}),
    ("roles:lb", {"lb1"}),
    ("role:lb", set()),  # run-list roles only, as Chef
    ("recipes:haproxy", {"lb1"}),
    ("recipe:nginx", {"web2"}),
    ("recipes:nginx\\:\\:default", {"web1"}),
    ("recipes:nginx*", {"web1", "web2"}),
    ("run_list:role\\[db\\]", {"db1", "db2"}),
    ('run_list:"recipe[redis]"', {"cache-1"}),
    ("tags:canary", {"web1", "cache-1"}),
    ("chef_type:node", ALL),
    # nested attributes
    ("kernel_machine:x86_64", {"web1", "web2", "db1"}),
    ("machine:aarch64", {"db2"}),
    ("kernel:release", {"web1", "web2", "db1", "db2"}),
    ("postgresql_version:14", {"db2"}),
    ("app_enabled:true", {"web1"}),
    ("app_enabled:false", {"web2"}),
    ("port:8080", {"web1"}),
    ("port:80", {"web2"}),
    # wildcards
    ("name:web*", {"web1", "web2"}),
    ("name:*1", {"web1", "db1", "lb1", "cache-1"}),
    ("name:?b?", {"db1", "db2", "lb1"}),
    ("ipaddress:10.0.0.*", {"web1", "web2", "WEB3", "lb1"}),
    ("ipaddress:10.0.*.1?", {"web1", "web2", "WEB3"}),
    ("kernel_release:*.0", {"web2", "db1", "db2"}),
    ("platform:*", ALL - {"lb1", "bare"}),
    ("name:web\\*", set()),  # an escaped star is literal
    ("kern*_machine:aarch64", {"db2"}),  # a wildcard in the field name
    ("*_version:13", {"db1"}),
    # case-sensitive, as Chef's whitespace analyzer
    ("platform:ubuntu", {"web1", "web2"}),
    ("platform:Ubuntu", {"WEB3"}),
    ("name:WEB*", {"WEB3"}),
    # bare terms and the all-values field
    ("canary", {"web1", "cache-1"}),
    ("text:canary", {"web1", "cache-1"}),
    ("10.0.1.*", {"db1", "db2"}),
    ("and", set()),  # lower-case keywords are plain terms
    # phrases
    ('description:"in memory store"', {"cache-1"}),
    ('description:"in memory"', set()),  # phrases match whole values
    ('"in memory store"', {"cache-1"}),
    ('name:"web*"', set()),  # no wildcards inside a phrase
    # booleans
    ("role:web AND chef_environment:prod", {"web1", "web2"}),
    ("role:web && chef_environment:prod", {"web1", "web2"}),
    ("role:db OR role:cache", {"db1", "db2", "cache-1"}),
    ("role:db || role:cache", {"db1", "db2", "cache-1"}),
    ("role:db role:cache", {"db1", "db2", "cache-1"}),  # default operator OR
    ("role:web AND NOT tags:canary", {"web2", "WEB3"}),
    ("role:web -tags:canary", {"web2", "WEB3"}),
    ("role:web !tags:canary", {"web2", "WEB3"}),
    ("+role:web +tags:blue", {"web1", "web2"}),
    ("+role:web tags:canary", {"web1", "web2", "WEB3"}),  # optional clause: no effect
    ("NOT role:web", ALL - {"web1", "web2", "WEB3"}),
    ("-chef_environment:prod", {"db2", "cache-1", "WEB3", "bare"}),
    ("role:web AND (tags:canary OR platform:Ubuntu)", {"web1", "WEB3"}),
    ("(role:db OR role:cache) AND chef_environment:staging", {"db2", "cache-1"}),
    ("role:(db OR cache)", {"db1", "db2", "cache-1"}),  # a field applied to a group
    ("chef_environment:prod AND -(role:web OR roles:lb)", {"db1"}),
    ("chef_environment:prod AND -(role:web OR role:lb)", {"db1", "lb1"}),  # role: run list
    ("role:web AND tags:blue OR role:db", {"web1", "web2"}),  # Lucene: a AND b OR c = a AND b
    ("(role:web AND tags:blue) OR role:db", {"web1", "web2", "db1", "db2"}),
    ("chef_environment:prod AND (NOT role:web)", {"db1", "lb1"}),  # pure negative group
    # ranges
    ("cpu_total:[4 TO 16]", {"web1", "web2", "db1", "WEB3"}),
    ("cpu_total:{4 TO 16}", {"web2"}),
    ("cpu_total:[4 TO 16}", {"web1", "web2", "WEB3"}),
    ("cpu_total:[16 TO *]", {"db1", "db2"}),
    ("cpu_total:[* TO 2]", {"cache-1", "lb1"}),
    ("cpu_total:[* TO *]", ALL - {"bare"}),
    ("cpu_total:[10 TO 9]", set()),
    ("platform_version:[8 TO 21]", {"db2", "web2"}),  # numeric: 8 <= 20.04 <= 21
    ("name:[d TO lb1]", {"db1", "db2", "lb1"}),  # strings
    ("name:{db1 TO web1}", {"db2", "lb1"}),
    ("ipaddress:[10.0.1.0 TO 10.0.1.9]", {"db1", "db2"}),  # not numbers: string order
    # fuzzy and boosts
    ("name:wbe1~1", {"web1"}),  # a transposition is one edit
    ("name:wbe1~", {"web1", "web2", "db1", "lb1"}),  # default: two edits
    ("name:wbe1~0", set()),
    ("name:web5~1", {"web1", "web2"}),
    ("name:web5~0.7", {"web1", "web2"}),  # a similarity: (1 - 0.7) * 4 letters → 1 edit
    ("name:web5~0.8", set()),  # (1 - 0.8) * 4 → 0 edits
    ("name:web1^2", {"web1"}),
    ("role:web^1.5 AND tags:blue", {"web1", "web2"}),
    ('description:"memory store in"~3', set()),  # proximity is accepted, ignored
    # escapes
    ("url:http\\://lb1\\:8080/a", {"lb1"}),
    ('url:"http://lb1:8080/a"', {"lb1"}),
    ("path:/var/www", {"lb1"}),
    ("name:cache\\-1", {"cache-1"}),
    ("name:cache-1", {"cache-1"}),
]


@pytest.mark.parametrize("query,expected", TABLE, ids=[q for q, _ in TABLE])
def test_query_table(query, expected):
    assert names(query) == expected


def test_ranges_compare_numbers_numerically_not_as_strings():
    nodes = [node(f"n{i}", normal={"size": i}) for i in (2, 9, 10, 100)]
    assert names("size:[9 TO 99]", nodes) == {"n9", "n10"}
    assert names("size:{2 TO *]", nodes) == {"n9", "n10", "n100"}


def test_glob_matching_is_linear_not_backtracking():
    nodes = [node("n", normal={"blob": "a" * 5000})]
    assert names("blob:*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", nodes) == set()
    assert names("blob:*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a", nodes) == {"n"}
    assert names("blob:a?a*a", nodes) == {"n"}


# --------------------------------------------------------------------------- parser errors

ERRORS = [
    ("(role:web", 0, "unbalanced parenthesis"),
    ("role:web)", 8, "unbalanced parenthesis"),
    ("role:web AND (tags:a OR (tags:b)", 13, "never closed"),
    ("()", 0, "empty parentheses"),
    ("name:", 5, "value after 'name:' is missing"),
    ("name: AND x", 6, "value after 'name:'"),
    ("recipes:nginx::default", 13, "escape it as '\\:'"),
    (":web", 0, "field name must come before ':'"),
    ('name:"web', 5, "unterminated quoted phrase"),
    ("name:web\\", 8, "dangling backslash"),
    ("AND role:web", 0, "has nothing on its left"),
    ("role:web AND", 12, "must be followed by a term"),
    ("role:web OR OR x", 12, "must be followed by a term"),
    ("-", 1, "'-' must be followed by a term"),
    ("NOT", 3, "'NOT' must be followed by a term"),
    ("cpu:[1 TO 5", 4, "unterminated range"),
    ("cpu:[1 5]", 7, "expected 'TO'"),
    ("cpu:[1 TO 5 6]", 12, "expected ']' or '}'"),
    ("cpu:[]", 5, "expected a range bound"),
    ("a]", 1, "a range is written"),
    ("name:web^", 8, "'^' must be followed by a number"),
    ("", 0, "empty query"),
    ("   ", 0, "empty query"),
]


@pytest.mark.parametrize("query,position,fragment", ERRORS, ids=[e[0] or "<empty>" for e in ERRORS])
def test_malformed_queries_name_the_position_and_the_problem(query, position, fragment):
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert info.value.position == position
    assert fragment in info.value.message
    assert f"at position {position}" in str(info.value)


def test_nesting_is_bounded():
    parse_query("(" * 60 + "a" + ")" * 60)
    with pytest.raises(QueryError, match="nested deeper"):
        parse_query("(" * 500 + "a" + ")" * 500)


QUERY_CHARS = st.sampled_from(
    list('abcXYZ019 *?:\\"()[]{}^~+-!&|/._') + ["AND", "OR", "NOT", "TO", " AND ", " TO "]
)


@settings(max_examples=600, deadline=None)
@given(st.lists(QUERY_CHARS, max_size=40).map("".join))
def test_parser_raises_only_query_errors(text):
    try:
        query = parse_query(text)
    except QueryError as exc:
        assert 0 <= exc.position <= len(text)
        assert f"at position {exc.position}" in exc.message
        return
    search(NODES, query)  # whatever parses also runs


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parser_raises_only_query_errors_on_any_text(text):
    try:
        parse_query(text)
    except QueryError:
        pass


# --------------------------------------------------------------------------- sort and paging


def test_results_are_by_name_and_paged():
    total, rows = search(NODES, "*:*")
    assert total == 8
    assert [r["name"] for r in rows] == sorted(ALL)
    total, rows = search(NODES, "*:*", start=2, rows=3)
    assert total == 8 and [r["name"] for r in rows] == sorted(ALL)[2:5]
    total, rows = search(NODES, "*:*", start=100)
    assert total == 8 and rows == []
    total, rows = search(NODES, "role:web", rows=0)
    assert total == 3 and rows == []


def test_rows_are_the_node_records_themselves():
    _, rows = search(NODES, "name:web1")
    assert rows == [NODES[0]] and rows[0] is NODES[0]


def test_sort_by_field_numeric_descending_missing_last():
    _, rows = search(NODES, "*:*", sort="cpu_total desc")
    assert [r["name"] for r in rows] == [
        "db2",
        "db1",
        "web2",
        "WEB3",  # ties (4) by name
        "web1",
        "cache-1",
        "lb1",
        "bare",  # no cpu_total: last
    ]
    _, rows = search(NODES, "*:*", sort="platform asc, name desc")
    assert [r["name"] for r in rows] == [
        "WEB3",
        "db2",
        "db1",
        "cache-1",
        "web2",
        "web1",
        "lb1",
        "bare",
    ]


def test_sort_by_chef_id_field_is_by_name():
    _, rows = search(NODES, "*:*", sort="X_CHEF_id_CHEF_X asc")
    assert [r["name"] for r in rows] == sorted(ALL)


@pytest.mark.parametrize("bad", ["name sideways", "name asc extra", "name,", " , name"])
def test_bad_sort_is_a_query_error(bad):
    with pytest.raises(QueryError):
        parse_sort(bad)


@pytest.mark.parametrize("kw", [{"start": -1}, {"rows": -5}, {"rows": True}, {"start": "1"}])
def test_bad_paging_is_refused(kw):
    with pytest.raises(ValueError):
        search(NODES, "*:*", **kw)


def test_index_cache_reuses_unchanged_records_and_forgets_replaced_ones():
    nodes = {n["name"]: n for n in copy.deepcopy(NODES)}
    cache = IndexCache()
    assert search(nodes.values(), "tags:blue", cache=cache)[0] == 2
    assert len(cache) == 8
    first = cache.lookup(nodes["web2"])
    assert first is not None
    nodes["web2"] = {**nodes["web2"], "normal": {"tags": ["green"]}}  # saved: a new record
    del nodes["bare"]
    assert {r["name"] for r in search(nodes.values(), "tags:blue", cache=cache)[1]} == {"web1"}
    assert len(cache) == 7
    assert cache.lookup(nodes["web1"]) is not None
    assert cache.lookup(nodes["web2"]) is not first


# --------------------------------------------------------------------------- partial search


def test_partial_search_extracts_paths_from_the_merged_attributes():
    _, rows = search(NODES, "role:web AND chef_environment:prod")
    spec = {
        "name": ["name"],
        "ip": ["ipaddress"],
        "kernel": ["kernel", "release"],
        "port": ["port"],
        "roles": ["role"],
        "env": ["chef_environment"],
        "app": ["app"],
        "missing": ["no", "such"],
        "empty": [],
        "through_leaf": ["ipaddress", "x"],
    }
    out = partial(rows, spec, url_for=lambda n: f"https://h/organizations/o/nodes/{n['name']}")
    assert out == [
        {
            "url": "https://h/organizations/o/nodes/web1",
            "data": {
                "name": "web1",
                "ip": "10.0.0.11",
                "kernel": "5.15.0-91",
                "port": 8080,
                "roles": ["web"],
                "env": "prod",
                "app": {"version": "1.2.3", "enabled": True},
                "missing": None,
                "empty": None,
                "through_leaf": None,
            },
        },
        {
            "url": "https://h/organizations/o/nodes/web2",
            "data": {
                "name": "web2",
                "ip": "10.0.0.12",
                "kernel": "5.4.0",
                "port": 80,
                "roles": ["web"],
                "env": "prod",
                "app": {"version": "1.3.0", "enabled": False},
                "missing": None,
                "empty": None,
                "through_leaf": None,
            },
        },
    ]


def test_partial_search_uses_the_cache_when_given():
    cache = IndexCache()
    _, rows = search(NODES, "name:db1", cache=cache)
    assert partial(rows, {"v": ["postgresql", "version"]}, cache=cache) == [
        {"url": "db1", "data": {"v": 13}}
    ]


def test_filter_result_forms():
    spec = {"name": ["name"], "ip": ["ipaddress"]}
    assert parse_filter_result(spec) == spec
    assert parse_filter_result({"filter_result": spec}) == spec
    assert parse_filter_result({"filter_result": ["a"]}) == {"filter_result": ["a"]}
    assert parse_filter_result({}) == {}
    for bad in (None, [], "x", {"a": "name"}, {"a": [1]}, {"filter_result": {"a": "b"}}):
        with pytest.raises(ValueError, match="invalid partial search request body"):
            parse_filter_result(bad)

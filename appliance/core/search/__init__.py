"""Chef node search over the node records: the index document, the query language, partial search.

There is no Chef server (and no Solr/Elasticsearch) behind the appliance, so it answers
``/search/node`` itself. What Chef Server does, from its source (oc_erchef):

- Index document (``chef_node:ejson_for_indexing``): the attributes deep-merged with
  ``default < normal < override < automatic`` (``chef_deep_merge``: hashes merge key by key,
  anything else, arrays included, is replaced by the higher level), then the top-level keys
  ``name``, ``chef_type`` ("node"), ``chef_environment``, ``recipe`` and ``role`` (the names in
  the run list, ``recipe[x]`` → ``x``) and ``run_list`` replace attributes of the same name.
- Flattening (``chef_index_expand:expand``): a leaf under the key path ``k1..kn`` is indexed as
  ``k1_k2_..._kn`` *and* under its own key ``kn``; an array gives one value per element under
  the same keys; every key of a nested hash is also indexed as a *value* of its parent's path
  (so ``kernel:release`` matches ``{"kernel": {"release": ...}}``); values are strings:
  integers in decimal, ``true``/``false``, ``null`` as ``""``; duplicates dropped. The type
  marker ``X_CHEF_type_CHEF_X:node`` is indexed too.
- Query (``chef_lucene.peg`` → Solr/Elasticsearch ``query_string``): Lucene syntax, with
  ``field:value`` on the flattened keys. Elasticsearch uses a ``whitespace`` analyzer and
  ``lowercase_expanded_terms: false``, so matching is **case-sensitive**; no default operator
  is configured, so juxtaposed clauses are **OR** (Lucene's default). ``AND``/``OR``/``NOT``
  are keywords only in capitals (``a and b`` is three terms). A missing ``q`` means ``*:*``;
  ``start``/``rows`` are non-negative integers (default 0 and 1000); Chef ignores ``sort``.
- Partial search (``chef_wm_search``): the body maps an alias to a key path into the index
  document above (merged attributes plus the top-level keys); a missing path gives ``null``.

Where we differ, on purpose:
- Values are matched whole (Chef's whitespace tokenizer would split ``"a b"`` into two tokens
  and make ``field:a`` match it); a quoted phrase matches a whole value, wildcards in it are
  literal, a proximity ``~N`` after it is accepted and ignored, as is a boost ``^N``.
- ``roles`` and ``recipes`` also hold the run list's roles and recipes (Chef fills them only
  from chef-client's automatic attributes, which no chef-client writes here); ``role`` and
  ``recipe`` are Chef's run-list-only fields.
- A bare term (no field), and the field ``text``, match any value of any field.
- Ranges compare numerically when the value and every bound given are numbers, else as
  strings (Chef compares strings only); ``*`` is an open bound; ``[`` / ``{`` may mix.
- ``sort`` is honoured (``FIELD [asc|desc]``, comma-separated; Chef's ``X_CHEF_id_CHEF_X`` is
  the node name); results are by name otherwise, so paging is stable.
- A query that is pure negation (``-role:db``, ``NOT a``), at any level, matches everything
  except what it excludes (Elasticsearch's behaviour; plain Lucene would match nothing).
- ``/regex/`` is not supported: ``/`` is an ordinary character. Floats are indexed as
  Python's ``repr`` (Erlang's ``~p`` would write ``1.0e10`` where we write ``10000000000.0``).

Clauses combine as in Lucene's classic QueryParser: ``+``/``-``/``!``/``NOT`` mark a clause
required/prohibited; ``AND`` makes both neighbours required; ``OR`` and juxtaposition leave
them optional; a group matches when every required clause and no prohibited one matches and,
if nothing is required, at least one optional clause does (so ``a AND b OR c`` is ``a AND b``).

Errors are `QueryError(message, position)`; ``position`` is the 0-based offset in the query
text and the message says ``at position N``, as Python's ``re`` does.

The package holds, by concern: `index` (the index document and its cache), `lexer` and
`parser` (query text to a tree), `query` (the tree and its value matchers), `results`
(sorting, paging, partial search); this module is its interface.
"""

from __future__ import annotations

from appliance.core.search.errors import QueryError
from appliance.core.search.index import IndexCache, flatten_node, index_document
from appliance.core.search.parser import parse_query
from appliance.core.search.query import Query
from appliance.core.search.results import (
    DEFAULT_ROWS,
    parse_filter_result,
    parse_sort,
    partial,
    search,
)

__all__ = [
    "DEFAULT_ROWS",
    "IndexCache",
    "Query",
    "QueryError",
    "flatten_node",
    "index_document",
    "parse_filter_result",
    "parse_query",
    "parse_sort",
    "partial",
    "search",
]

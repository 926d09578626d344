"""Hybrid search over documents and assets: a semantic leg (HNSW over passage embeddings of
the active model), a keyword leg (BM25 through pg_textsearch where installed, else BM25 from
the SQL keyword index's tables: knowledge.db.keyword_index), fused per item by weighted
reciprocal rank.

- `query`: what a search asks for (SearchQuery, checked) and what it answers (SearchResult);
- `statement`: the one SQL statement per search, composed leg by leg: both legs, the
  fusion, the page of items with their best passages;
- `run`: the query embedded, the statement run, its rows made into hits;
- `snippets`: each hit's snippet, made from its best passage.
"""

from knowledge.search.query import *  # noqa: F403 (the names of its __all__)
from knowledge.search.run import *  # noqa: F403

"""Serving: what the app needs beyond the model library.

- ``gallery``, ``gallery_shards``, ``gallery_fingerprint``, ``thumbnails``: galleries
  read from disk (Arrow shards, lazily), fingerprinted without hashing every image,
  and thumbnails cached on disk.
- ``index``: nearest-neighbour indexes (exact, faiss kinds), persisted and memory-mapped.
- ``retrieval``: the retrieval service the app's handlers call.
- ``feedback``, ``vote_backup``: the reviewers' vote store and its backup to the Hub.

The model library (``vse``: encoders, losses, metrics, Hub I/O) does not import
anything from here, so a researcher who trains and embeds never loads it.
"""

"""Standard-library-only plumbing every layer shares, apart from the networks: atomic files and checksums
(:mod:`.files`), folder locks (:mod:`.locks`), checkpoint snapshots (:mod:`.snapshots`), output-folder claims
(:mod:`.outputs`) and up-front memory checks (:mod:`.resources`). Nothing here imports torch, so the export
runtime imports it freely. This file imports nothing."""

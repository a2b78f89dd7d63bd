"""Data formats: records, JSON-lines reading with file:line:field errors, corpora, MediaWiki text."""

"""Data: image decoding and evaluation preprocessing (:mod:`.transforms`)."""

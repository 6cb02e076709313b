"""GPT-2's byte alphabet: how byte-level BPE files (``vocab.bpe``, ``encoder.json``, ``tokenizer.json``)
write bytes as text. Kept apart so the engine and the file readers and writers all share it."""

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    ``encoder.json`` and ``vocab.bpe`` store tokens as text in which each byte is written as one
    character: printable Latin-1 bytes as themselves, the others as characters from U+0100 upward.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping

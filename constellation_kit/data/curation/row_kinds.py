"""Quality filters for one kind of row: text documents, or media rows' captions."""

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from constellation_kit.data.curation.filters import report_name
from constellation_kit.data.curation.media_check import media_of


class ForRows(BaseFilter):
    """Apply ``inner`` to text rows only (``media=False``) or to media rows' captions only (``media=True``);
    the other kind passes untouched.

    A document the inner filter keeps but empties (C4's line removal can) is dropped too.
    Captions are filtered with the same machinery as text but their own thresholds: Gopher's
    50-word minimum would drop every caption. Drops are counted under ``inner``'s report name,
    prefixed ``caption_`` for captions.
    """

    def __init__(self, inner: BaseFilter, media: bool) -> None:
        super().__init__()
        self.inner = inner
        self.media = media
        self.report_name = ("caption_" if media else "") + report_name(inner)
        self.name = self.report_name

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if (media_of(doc.metadata) is not None) != self.media:
            return True
        result = self.inner.filter(doc)
        if (result is True or (isinstance(result, tuple) and result[0])) and not doc.text.strip():
            # A filter that rewrites (C4's line removal) can leave nothing; an empty document would
            # shift the positions the dedup stages address documents by.
            return False, "emptied"
        return result

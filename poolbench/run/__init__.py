"""Running a sweep: the grid and the local loop (:mod:`.runner`), one torchrun rank (:mod:`.rank`), the
dispatcher that renders the report (:mod:`.sweep`), results files (:mod:`.results`, :mod:`.shards`,
:mod:`.linefile`, :mod:`.runlock`) and the per-layer benchmark (:mod:`.layerbench`)."""

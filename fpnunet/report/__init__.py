"""What a person sees: overlay pictures, the HTML report (``fpn_report``) and lesion growth.

:mod:`.overlay` draws one picture, :mod:`.background` finds the en-face image under it,
:mod:`.cases` measures and draws one case, :mod:`.writers` fills overlay folders,
:mod:`.visits` reads patient/eye/date, :mod:`.growth` fits growth rates, :mod:`.build` gathers
a report, :mod:`.html` writes it (``fpn_report`` is :mod:`fpnunet.commands.report`). The report reads the files the
other stages write (label maps, ``dataset.json``), not their internals.
"""

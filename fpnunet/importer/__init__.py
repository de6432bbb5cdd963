"""``fpn_import``: device exports (Heidelberg VOL / HEYEX XML / E2E, Topcon FDA/FDS, DICOM OPT/OP) into the
raw dataset layout, with the SLO localizer registered onto each volume's en-face grid.

One idea per module: :mod:`.scan` (what a reader hands over), :mod:`.detect` (format by content),
:mod:`.heyex`, :mod:`.topcon` and :mod:`.dicom` (readers; :mod:`.topcon_place`: the Topcon fundus placed by
the file's registration box), :mod:`.geometry` (raster check, spacing, mirroring),
:mod:`.localizer` (SLO onto the en-face grid), :mod:`.enface` (other en-face images registered
with SimpleITK, check pictures), :mod:`.labels`, :mod:`.privacy` (keyed pseudonyms),
:mod:`.report`, :mod:`.dataset` (writing the folder), :mod:`.mirror_back` (predictions of mirrored
OS scans flipped back) and :mod:`.cli`.

eyepy, pydicom and Pillow (Topcon JPEG 2000) are optional: they are imported inside the readers only
(``pip install "fpnunet[import]"``).
"""

"""Synthetic OCT volumes with geographic atrophy (GA) and paired en-face images: ``fpn_make_synthetic``.

Every case is an OCT macular cube in numpy order ``(B, D, A)`` (B-scans, depth, A-scans) with
an en-face GA label ``(B, A)`` and two paired en-face images on the same grid: fundus
autofluorescence (FAF, GA dark) and infrared SLO (GA only faintly brighter). The field of view
is ``6 mm (B) x 1.9 mm (D) x 6 mm (A)`` whatever the shape, so with ``B < A`` the en-face plane
is anisotropic like a Spectralis cube (49 x 496 x 512: 122 um x 3.8 um x 11.7 um).

What a volume holds, top to bottom: dark vitreous; a layered retina (bright nerve fibre layer,
alternating plexiform / nuclear layers, dark outer nuclear layer, bright ellipsoid zone and
retinal pigment epithelium (RPE)) whose surface is bowl-shaped, tilted and jittered per B-scan;
a foveal pit; drusen lifting the RPE; a textured choroid fading into the sclera. Retinal vessels
(a tree of arcades and branches from an optic disc outside the field) cast shadows down to the
choroid and show dark in FAF and SLO. Inside a GA lesion the ellipsoid zone and RPE are lost,
the outer nuclear layer thins, and light reaches deeper (choroidal hypertransmission); the label
is exactly the set of en-face pixels whose soft lesion membership exceeds one half, the same
membership that drives the RPE loss, the hypertransmission and the dark FAF (the outer-retina
thinning starts a little outside the border, as in real GA).

The volume is then degraded like a real scan: multiplicative speckle, additive noise, a gain
per B-scan (with occasional dim scans), lateral vignetting and depth roll-off. Those, plus
RPE loss and hypertransmission pulling the depth mean in opposite directions, keep a plain
mean-intensity projection from solving the task (see :func:`oracle_threshold_dice`).

Randomness: case ``i`` of the training set is drawn from ``np.random.default_rng([seed, 0, i])``
(test case ``j`` from ``[seed, 1, j]``) and its patient's traits from a patient generator, so a
case never changes with ``n``. Patients hold one or two eyes (a right and a left eye, with the
optic disc on opposite sides, sharing GA severity, retinal thickness and brightness).

Modules (one idea each):

* :mod:`.geometry`: default shape, field of view, :func:`spacing_for_shape`.
* :mod:`.noise`: smooth random fields and the sigmoid the maps are built from.
* :mod:`.patients`: :class:`PatientTraits`, which cases are eyes of one patient.
* :mod:`.lesions`: GA lesion shapes (the signed en-face lesion level).
* :mod:`.vessels`: the retinal vessel tree and its rendering on the en-face grid.
* :mod:`.anatomy`: one eye's en-face maps, retinal layers and Bruch's membrane surface.
* :mod:`.enface`: the FAF and SLO images.
* :mod:`.case`: :func:`generate_case`: volume rendering, acquisition degradation, label.
* :mod:`.difficulty`: :func:`oracle_threshold_dice`.
* :mod:`.dataset`: :func:`make_synthetic_dataset`, the dataset folder writer.
The ``fpn_make_synthetic`` command is :mod:`fpnunet.commands.make_synthetic`.

The package imports nothing: import a name from the module that defines it.
"""

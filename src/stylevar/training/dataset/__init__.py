"""``stylevar triplets``: (content, style, target) datasets made by a teacher network (docs/triplets.md).

    config.py    what a build is asked (no torch)
    sources.py   the input images: found, checked, named; crops; the pairs and the split
    teachers.py  arbitrary (Magenta), multistyle26 (26 built-in styles), stylevar:CHECKPOINT
    filters.py   structure kept, colour moved: the measures, the decisions, the report
    build.py     the run: files, resume, the manifests and splits ``stylevar sft`` reads

Nothing is imported here, so the command line reads :mod:`.config` without torch.
"""

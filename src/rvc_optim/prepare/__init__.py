"""From raw recordings to an RVC experiment folder: ``rvc-optim prepare`` and ``rvc-optim index``.

The modules need the optional extra ``prepare`` (``pip install 'rvc-optim[prepare]'``) and import
its packages lazily: :mod:`.f0` (pitch), :mod:`.features` (HuBERT/ContentVec content features),
:mod:`.rmvpe` (RMVPE's network).
"""

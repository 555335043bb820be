"""From raw recordings to an RVC experiment folder: ``rvc-optim prepare`` and ``rvc-optim index``.

Modules: :mod:`~rvc_optim.prepare.audio` (read, resample, high-pass, slice, normalise),
:mod:`~rvc_optim.prepare.pipeline` (the whole run, parallel and resumable),
:mod:`~rvc_optim.prepare.layout` (folders, names, manifest), :mod:`~rvc_optim.prepare.files`
(atomic writes), :mod:`~rvc_optim.prepare.f0` (pitch), :mod:`~rvc_optim.prepare.rmvpe` (RMVPE's
network), :mod:`~rvc_optim.prepare.features` (HuBERT/ContentVec content features),
:mod:`~rvc_optim.prepare.cli` (the commands). Their extra dependencies come with
``pip install 'rvc-optim[prepare]'`` and are imported only when used.
"""

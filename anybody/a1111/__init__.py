"""The AUTOMATIC1111 webui front door: the "Anybody" tab, the ``/anybody/v1/`` routes and the txt2img/img2img
script. Imported only inside the webui (``scripts/`` registers it); the host adapter is ``anybody.host.a1111``."""

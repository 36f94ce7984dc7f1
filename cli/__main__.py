"""`python -m idistill.cli ...`, e.g. under `torchrun --nproc_per_node N -m idistill.cli ...`."""

from idistill.cli.main import main

main()

"""``python -m histoclass`` (what torchrun and srun launch)."""

from histoclass.cli import main

if __name__ == "__main__":
    main()

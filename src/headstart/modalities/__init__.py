"""What differs between images and texts, in one object each (see base.py)."""

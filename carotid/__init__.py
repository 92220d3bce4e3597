"""carotid: carotid-ultrasound image classifiers, trained and evaluated per person with Hugging Face Accelerate."""

__version__ = "0.1.0"

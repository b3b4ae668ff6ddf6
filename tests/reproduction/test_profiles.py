"""custom.reproduction.profiles: what each profile changes with respect to the protocol, derived from its settings."""

from __future__ import annotations

from custom.reproduction import cli
from custom.reproduction.profiles import DEMO, PAPER, shortened


def test_profiles_document_what_they_shorten():
    assert shortened(PAPER) == []
    demo = "\n".join(shortened(DEMO))
    for text in ("2.0 x 1.9 x 1.9", "128 x 128", "14 epochs x 100 iterations, batch 16, lr 0.01 x0.1 after epoch 11",
                 "6 epochs x 10 iterations, batch 16, lr 0.025 x0.1 after epoch 5", "8 subjects", "seed 1",
                 "demo_source_siemens_15.pt", "--train_source true", "tolerance 2 mm", "1.05 in-plane voxels",
                 "siemens_15 -> targets ge_15, philips_15", "budgets 5, 24, 90", "precision auto"):
        assert text in demo, text
    assert "held-out validation scan" not in demo  # 4, as the protocol
    # the command's documentation points to the derived list instead of restating it (it cannot drift)
    doc = " ".join(cli.__doc__.split())
    assert "shortened" in doc and "summary.md" in doc
    for text in ("2.0 x 1.9 x 1.9", "128 x 128", "14 epochs", "6 epochs", "seed 1", "5, 24, 90"):
        assert text not in doc, text

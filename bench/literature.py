"""Published results the report places a run beside. Quoted from the papers, not measured here."""

# Lossless results on MNIST digits (the full 10,000-digit test set), beside which the lossless
# section places a run on MNIST: (method, bits per pixel, source, what the figure is).
PUBLISHED_LOSSLESS_MNIST = (
    ("BB-ANS (VAE, bits back)", 1.41,
     "Townsend, Bird & Barber, ICLR 2019, arXiv:1901.04866",
     "one bits-back chain amortised over the test set, not a standalone file per image"),
    ("Bit-Swap (hierarchical VAE, bits back)", 1.29 * 1024 / 784,
     "Kingma, Abbeel & Ho, ICML 2019, arXiv:1905.06845",
     "1.29 bits/dim on digits padded to 32x32, i.e. 1.69 per original pixel; one bits-back chain"),
    ("LZMA", 1.49, "Kingma, Abbeel & Ho, ICML 2019", "the whole test set concatenated, one file"),
    ("gzip", 1.65, "Kingma, Abbeel & Ho, ICML 2019", "the whole test set concatenated, one file"),
)

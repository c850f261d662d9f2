"""Gradio app: search images by sentence, browse nearest captions, review web tags.

Not built yet: the app arrives with its own issue, once the offline default model
in ``assets/`` exists.  Until then ``python app.py`` runs a short example of the
library instead: it builds the offline default model (packaged EfficientNet-Lite0
and MiniLM, no network), embeds two images and two sentences, saves the model and
loads it back.  Its projections are untrained, so the scores mean nothing yet.
"""

from __future__ import annotations

import tempfile

from PIL import Image

from vse import VSEConfig, VSEModel


def library_example() -> None:
    model = VSEModel(VSEConfig()).eval()
    images = [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))]
    sentences = ["a red square", "a blue square"]
    image_emb, text_emb = model.encode_image(images), model.encode_text(sentences)
    print(f"image embeddings {tuple(image_emb.shape)}, sentence embeddings {tuple(text_emb.shape)}")
    print("cosine similarities (untrained projections):")
    print(model.similarity(text_emb, image_emb))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = VSEModel.from_pretrained(folder)
        same = bool((reloaded.encode_text(sentences) == text_emb).all())
        print(f"saved to a folder and loaded back: identical embeddings = {same}")


if __name__ == "__main__":
    print("The retrieval app is not built yet; running the library example instead.")
    library_example()

"""Tiny models built from config, trained on random data on CPU with the runwire integrations.

    python integration_train.py lightning   # 2 processes (Lightning's DDP launcher, gloo)
    python integration_train.py hf          # Hugging Face Trainer: one process, or each of torchrun's

The emitter's settings come from RUNWIRE_* variables (gateway, run id, spool, gpu=false).
"""

from __future__ import annotations

import os
import sys

import torch

SAMPLES, BATCH, EPOCHS = 64, 8, 2


def lightning_main(project: str) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from runwire.integrations.lightning import RunwireLogger

    class Tiny(L.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 4, generator=generator), torch.randn(SAMPLES, 1, generator=generator))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS, log_every_n_steps=1,
                        logger=RunwireLogger(project=project, name="tiny-lightning"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), DataLoader(data, batch_size=BATCH))


def hf_main(project: str, output_dir: str) -> None:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from runwire.integrations.huggingface import RunwireCallback

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)

    class Random(torch.utils.data.Dataset):
        def __len__(self):
            return SAMPLES

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 64, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long),
                    "labels": torch.tensor(i % 2)}

    args = TrainingArguments(output_dir=output_dir, max_steps=6, per_device_train_batch_size=BATCH, logging_steps=1,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, run_name="tiny-bert")
    Trainer(model=model, args=args, train_dataset=Random(), callbacks=[RunwireCallback(project=project)]).train()


if __name__ == "__main__":
    if sys.argv[1] == "lightning":
        lightning_main(sys.argv[2])
    else:
        hf_main(sys.argv[2], sys.argv[3])
    print("TRAINED", os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")), flush=True)

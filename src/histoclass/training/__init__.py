"""Training: the LightningModule, callbacks for the two-phase schedule, run directories and the train job."""

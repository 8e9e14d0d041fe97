"""The suppression list: channels and addresses (e-mail addresses, push tokens) never sent to again."""

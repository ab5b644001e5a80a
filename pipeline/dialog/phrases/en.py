"""Every sentence the bot says in English: questions, hints, phrases, labels and tool messages.

Adding a language is one more file like this one (and its entry in ``pipeline.dialog.phrases``).
"""

# the question for each slot
QUESTIONS = {
    "date": "What date would you like to come?",
    "time": "What time would you like?",
    "party_size": "How many people will be in your party?",
    "name": "May I have the name for the booking?",
    "phone": "What phone number can we reach you at?",
    "note": "Do you have any special requests, such as allergies or a birthday?",
}

# how to answer, after a failed try
HINTS = {
    "date": 'You can say a date like "December 24th" or "next Friday".',
    "time": 'You can say a time like "7 pm" or "half past seven".',
    "party_size": 'Please tell me the number of people, like "two people".',
    "name": 'Please tell me your name, like "My name is Smith".',
    "phone": 'Please say the digits one by one, like "zero nine zero, one two three four, five six seven eight".',
    "note": 'If you have none, just say "no requests".',
    "confirm": 'Please say "yes" if it is correct, or tell me what to change.',
}

# everything else the rules agent says
PHRASES = {
    "greeting": "Thank you for calling {name}. I can take your reservation. What date would you like to come?",
    "sorry_again": "I'm sorry, could you say that again?",
    "give_up": "I'm sorry, I couldn't get that. Please call the restaurant directly at {phone}, or try again later. Thank you for calling.",
    "booked": "Thank you, your table is booked. Your reservation number is {id}. We look forward to seeing you, {name}, {when}. Is there anything else?",
    "which_fix": "I'm sorry. What would you like to change?",
    "ask_new_value": "What should the {label} be?",
    "say_slot_again": "I'm sorry. Could you tell me the {label} again?",
    "changed": "I've changed the {label} to {value}.",
    "declined_end": "All right, I haven't made a booking. Thank you for calling, goodbye.",
    "goodbye_booked": "Thank you for calling. We look forward to seeing you. Goodbye.",
    "goodbye": "Thank you for calling. Goodbye.",
    "goodbye_unbooked": "All right, no booking has been made. Thank you for calling, goodbye.",
    "anything_else": "Is there anything else?",
    "after_booking_change": "Your booking is already confirmed. To change or cancel it, please call the restaurant at {phone}.",
    "back_to_booking": "",
    "ack_book": "Certainly, I can take a booking for you.",
    "ack_note": "Noted.",
    "ack_no_note": "All right.",
    "ack_phone": "Thank you, I have your phone number.",
    "ack_name": "Thank you, {name}.",
    "ack_when": "{when}, got it.",
    "available_dates": "We have tables on {dates}.",
    "free_times": "On {date} we have tables at {times}.",
    "no_free": "I'm sorry, there are no free tables for a while.",
    "wait_ok": "Of course, take your time.",
    "repeat_lead": "Of course.",
    "phone_more": "{digits}, got it. Please go on.",
    "confirm_change": "Shall I change the {label} to {value}?",
    "keep_value": "All right, the {label} stays {value}.",
    "confirm_end": "Would you like to stop making this booking?",
    "choose": "Would you like {a} or {b}?",
    "which_date": "Did you mean {a}, or {b}?",
    "confirm_guess": "Did you say {value}?",
    "confirm_no_note": "No special requests, is that right?",
    "confirm_name": "Is the name {name}?",
    "note_what": "What would you like us to know?",
    "no_answer": "I'm sorry, I can't answer that here. Please call the restaurant at {phone}.",
    "person": "I'm sorry, I can't put you through to the staff from this line. Please call the restaurant at {phone}.",
    "manage_phone": "What phone number is the booking under?",
    "manage_not_found": "I couldn't find a booking under {phone}.",
    "manage_id_not_found": "I couldn't find a booking with the number {id}.",
    "manage_which_date": "There are {n} bookings under that number. Which date is it for?",
    "manage_found": "I have your booking: {when}, {party}, under the name {name}.",
    "check_done": "That booking stands as it is. Is there anything else?",
    "cancel_confirm": "Shall I cancel this booking?",
    "cancelled": "Your booking is cancelled. Is there anything else?",
    "cancel_kept": "All right, the booking stays as it is. Is there anything else?",
    "change_what": "What would you like to change?",
    "change_confirm": "Shall I change it to {when}, {party}, under the name {name}?",
    "changed_booking": "Done: your booking is now {when}, {party}. Is there anything else?",
    "manage_store_error": "I'm sorry, the booking system is unavailable right now. Please call the restaurant directly.",
    "caller_id_offer": "Shall I use the number you are calling from, the one ending in {last4}?",
    "transferring": "Of course. I'll put you through to the restaurant now. Please hold.",
    "give_up_transfer": "I'm sorry, I couldn't get that. I'll put you through to the restaurant now. Please hold.",
    "keypad_phone": "You can also type the number on your keypad, followed by the hash key.",
    "keypad_yes_no": "You can also press 1 for yes or 2 for no.",
}

# what each slot is called in a sentence
LABELS = {
    "date": "date",
    "time": "time",
    "party_size": "party size",
    "name": "name",
    "phone": "phone number",
    "note": "special requests",
}

# what the booking tools say about a value
MESSAGES = {
    "unparsed": "I couldn't catch the {label}.",
    "invalid_phone": "Please give a Japanese phone number of 10 or 11 digits, starting with the area code. {heard}",
    "already_booked": "The booking is already confirmed; to change it, please call the restaurant.",
    "bad_name": "Could you give me the name once more?",
}
